"""Writes tests/data/pii_corpus.txt: hand-written templates filled with generated values.

The values that carry a checksum (cards, IBANs, NIKs, NPWPs) are generated valid with a fixed
seed; the look-alikes are generated to fail (16-digit numbers that fail Luhn and the NIK rules).
The written file is the corpus; run this only to change it:
``PYTHONPATH=. python tests/data/make_pii_corpus.py``.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import phonenumbers
from stdnum import iban, luhn
from stdnum.id import nik

rng = random.Random(16)


def digits(n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def card_number(prefix: str, length: int) -> str:
    body = prefix + digits(length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def cards() -> Iterator[str]:
    styles = itertools.cycle(["spaced", "dashed", "plain", "spaced"])
    for prefix, length in itertools.cycle(
        [("4", 16), ("51", 16), ("5412", 16), ("4", 16), ("37", 15), ("3530", 16), ("2221", 16)]
    ):
        number = card_number(prefix, length)
        style = next(styles)
        if length == 15:
            sep = "-" if style == "dashed" else " "
            yield sep.join([number[:4], number[4:10], number[10:]]) if style != "plain" else number
            continue
        groups = [number[i : i + 4] for i in range(0, 16, 4)]
        yield {"spaced": " ".join(groups), "dashed": "-".join(groups), "plain": number}[style]


def iban_of(country: str, bban: str) -> str:
    moved = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in moved))
    check = 98 - num % 97
    return f"{country}{check:02d}{bban}"


def ibans() -> Iterator[str]:
    grouped = itertools.cycle([True, False, True])
    for country, make in itertools.cycle(
        [
            ("DE", lambda: digits(18)),
            ("GB", lambda: "WEST" + digits(14)),
            ("NL", lambda: "ABNA" + digits(10)),
            ("FR", lambda: digits(10) + "A" + digits(10) + digits(2)),
            ("SG", None),
            ("BE", lambda: digits(12)),
            ("IT", lambda: "X" + digits(10) + "A" + digits(11)),
        ]
    ):
        if make is None:
            continue
        value = iban_of(country, make())
        if not iban.is_valid(value):
            continue
        if next(grouped):
            yield " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        else:
            yield value


REGENCIES = ["3171", "3173", "3273", "3578", "5171", "1271", "3374", "7371", "3471", "3201"]


def nik_number(female: bool) -> str:
    while True:
        region = rng.choice(REGENCIES) + f"{rng.randint(1, 12):02d}"
        day = rng.randint(1, 28) + (40 if female else 0)
        date = f"{day:02d}{rng.randint(1, 12):02d}{rng.randint(60, 99):02d}"
        value = region + date + f"{rng.randint(1, 9999):04d}"
        if nik.is_valid(value):
            return value


def niks() -> Iterator[str]:
    for female in itertools.cycle([False, True, True, False]):
        yield nik_number(female)


def npwp15() -> str:
    head = rng.choice(["01", "02", "03", "04", "05", "07", "08", "09"]) + digits(6)
    head += luhn.calc_check_digit(head)
    return head + digits(6)


def npwps() -> Iterator[str]:
    for style in itertools.cycle(["dotted", "plain15", "sixteen", "dotted", "nik"]):
        if style == "nik":
            yield nik_number(False)
            continue
        n = npwp15()
        if style == "dotted":
            yield f"{n[:2]}.{n[2:5]}.{n[5:8]}.{n[8]}-{n[9:12]}.{n[12:]}"
        elif style == "plain15":
            yield n
        else:
            yield "0" + n


def phones() -> Iterator[str]:
    def mobile() -> tuple[str, str, str]:
        return (
            "8" + rng.choice(["12", "13", "21", "22", "52", "53", "57", "77", "78", "95"]),
            digits(4),
            digits(4),
        )

    forms: list[Callable[[], str]] = [
        lambda: "0{}-{}-{}".format(*mobile()),
        lambda: "0{} {} {}".format(*mobile()),
        lambda: "0{}{}{}".format(*mobile()),
        lambda: "+62 {} {} {}".format(*mobile()),
        lambda: "+62 {}-{}-{}".format(*mobile()),
        lambda: "+62{}{}{}".format(*mobile()),
        lambda: "62{}{}{}".format(*mobile()),
        lambda: f"(021) {rng.randint(2, 8)}{digits(3)}-{digits(4)}",
        lambda: f"021-{rng.randint(2, 8)}{digits(7)}",
        lambda: f"(0274) {rng.randint(3, 5)}{digits(5)}",
        lambda: f"(022) {rng.randint(2, 7)}{digits(6)}",
        lambda: f"+65 {rng.choice('689')}{digits(3)} {digits(4)}",
        lambda: f"+44 20 7{digits(3)} {digits(4)}",
        lambda: f"+1 415 {rng.randint(2, 9)}{digits(2)} {digits(4)}",
        lambda: f"+61 2 9{digits(3)} {digits(4)}",
    ]
    for form in itertools.cycle(forms):
        value = form()
        parsed = phonenumbers.parse("+" + value if value.startswith("62") else value, "ID")
        if phonenumbers.is_valid_number(parsed):
            yield value


def ipv4s() -> Iterator[str]:
    while True:
        yield rng.choice(
            [
                f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                ".".join(
                    str(rng.randint(a, b)) for a, b in ((11, 223), (0, 255), (0, 255), (1, 254))
                ),
                f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            ]
        )


def ipv6s() -> Iterator[str]:
    while True:
        h = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
        yield rng.choice(
            [
                ":".join(h),
                f"2001:db8:{h[0]}::{h[1]}",
                f"fe80::{h[2]}:{h[3]}:{h[4]}:{h[5]}",
                f"2400:cb00:{h[6]}:{h[7]}::1",
            ]
        )


EMAIL_USERS = ["budi", "siti.rahma", "ahmad_f", "ops", "jane.doe", "m.rizky", "dewi88", "k.tan"]
EMAIL_DOMAINS = ["gmail.com", "yahoo.co.id", "tokomaju.co.id", "example.com", "mail.id", "corp.sg"]


def emails() -> Iterator[str]:
    while True:
        user = rng.choice(EMAIL_USERS) + rng.choice(["", str(rng.randint(1, 99)), "+inv"])
        yield f"{user}@{rng.choice(EMAIL_DOMAINS)}"


def non_luhn_16() -> Iterator[str]:
    while True:
        value = rng.choice("123456789") + digits(15)
        if not luhn.is_valid(value) and not nik.is_valid(value):
            yield value


POOLS: dict[str, Iterator[str]] = {
    "EMAIL": emails(),
    "PHONE": phones(),
    "CREDIT_CARD": cards(),
    "IBAN": ibans(),
    "ID_NIK": niks(),
    "ID_NPWP": npwps(),
    "IPV4": ipv4s(),
    "IPV6": ipv6s(),
    "BAD16": non_luhn_16(),
}
KIND_OF = {"IPV4": "IP_ADDRESS", "IPV6": "IP_ADDRESS"}

_SLOT = re.compile(r"\{([A-Z_0-9]+)(?::(\d))?\}")


def fill(template: str) -> str:
    """Replace each {KIND} with a fresh marked value; {KIND:n} repeats the n-th one."""
    seen: dict[str, str] = {}

    def one(m: re.Match[str]) -> str:
        key, ref = m.group(1), m.group(2)
        if ref is not None and f"{key}:{ref}" in seen:
            value = seen[f"{key}:{ref}"]
        else:
            value = next(POOLS[key])
            if ref is not None:
                seen[f"{key}:{ref}"] = value
        if key == "BAD16":
            return value
        return f"[[{KIND_OF.get(key, key)}|{value}]]"

    return _SLOT.sub(one, template)


def main(
    templates: str = "pii_templates.txt", out_name: str = "pii_corpus.txt", seed: str = "16"
) -> None:
    rng.seed(int(seed))
    source = Path(__file__).with_name(templates).read_text(encoding="utf-8")
    out: list[str] = []
    for raw in source.splitlines():
        if not raw.strip() or (raw.startswith("#") and not raw.startswith("#names:")):
            out.append(raw)
            continue
        if raw.startswith("#names:"):
            out.append(raw)
            continue
        times = 1
        if raw.startswith("x2 "):
            times, raw = 2, raw[3:]
        out.extend(fill(raw) for _ in range(times))
    Path(__file__).with_name(out_name).write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:4])
