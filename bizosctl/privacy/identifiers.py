"""Detectors for the structured kinds: e-mail, phone, card, IBAN, NIK, NPWP, IP address.

Each detector is one precompiled candidate pattern plus the field's validator: ``phonenumbers``
for phone numbers (the region's numbering plan), ``python-stdnum`` for Luhn, IBAN mod-97 and
the country format, NIK (region code from its bundled table, birth date with women's day + 40)
and NPWP (check digit), the standard library's ``ipaddress`` for IP addresses. Candidates right
after a label that names something else (``Invoice``, ``Order #``, ``Rp``, ``versi``) are
skipped: those are the look-alikes.

A detector yields ``(kind, start, end, key)``; ``key`` is the value in one canonical form, so
the same value written another way gets the same placeholder.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator

import phonenumbers
from stdnum import iban, luhn, numdb
from stdnum.exceptions import ValidationError
from stdnum.id import nik, npwp

Candidate = tuple[str, int, int, str]

# Labels of things that are not personal data, right before a number: an amount, an invoice,
# order, SKU or tracking id. "No." alone is not here: "No. KTP", "No. HP" precede PII.
_ID_LABEL = re.compile(
    r"(?:\b(?:rp|idr|usd|sgd|eur|inv|invoice|faktur|order|pesanan|po|sku|resi|awb|ref|"
    r"tracking|kode|code|batch|lot|serial|sn)\.?|[#$€£])\s*(?:no\.?|number|nomor)?\s*[:.]?\s*$",
    re.IGNORECASE,
)
_BEFORE = 24  # how far back a label is looked for


def _labelled_id(text: str, start: int) -> bool:
    return _ID_LABEL.search(text, max(0, start - _BEFORE), start) is not None


# --- EMAIL -----------------------------------------------------------------------------------
# RFC 5322's local part is wider, but what business text carries is this; the domain needs a
# dot and a 2+ letter top-level label, so ``user@localhost`` and ``git@host:repo`` stay.
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-]|\.\w)"
)


def emails(text: str) -> Iterator[Candidate]:
    for m in _EMAIL.finditer(text):
        value = m.group(0)
        if ".." not in value:
            yield "EMAIL", m.start(), m.end(), value.lower()


# --- PHONE -----------------------------------------------------------------------------------
# Candidates: an international ``+CC ...`` number, Indonesian ``62...``/``08...`` mobiles and
# ``(0xx)``/``0xx-`` landlines, with spaces, dashes or dots between groups. ``phonenumbers``
# then decides (valid in its region's numbering plan), so ``08-12-2024`` (a date) fails.
_PHONE = re.compile(
    r"(?:(?<=wa\.me/)|(?<![\w+.,/-]))"  # also a WhatsApp link: wa.me/6281...
    r"(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,5}){1,4}"  # +62 812-3456-7890, +44 20 ...
    r"|\(0\d{1,3}\)[ .-]?\d{3,4}(?:[ .-]?\d{3,4}){0,2}"  # (021) 555-1234
    r"|(?:62|0)\d{2,4}(?:[ .-]?\d{2,5}){1,3}"  # 0812 3456 7890, 6281234567890, 021-2934...
    r")"
    r"(?![\w-]|[.,]\d)"
)
_PHONE_DIGITS = range(7, 16)  # E.164 has at most 15
_NON_DIGIT = re.compile(r"\D")


def phones(text: str) -> Iterator[Candidate]:
    for m in _PHONE.finditer(text):
        value = m.group(0)
        digits = _NON_DIGIT.sub("", value)
        if len(digits) not in _PHONE_DIGITS or _labelled_id(text, m.start()):
            continue
        e164 = _valid_phone(value, digits)
        if e164 is not None:
            yield "PHONE", m.start(), m.end(), e164


def _valid_phone(value: str, digits: str) -> str | None:
    """The E.164 form when ``phonenumbers`` finds the number valid, else None."""
    # An Indonesian number (+62 / 62 / 0 + national number) goes straight to the numbering
    # plan check: phonenumbers.parse, which takes 4/5 of the time, has nothing to add there.
    national = None
    if digits.startswith("62") and not value.startswith("0"):
        national = digits[2:]
    elif value[0] in "0(":
        national = digits[1:]
    if national is not None and not national.startswith("0"):
        number = phonenumbers.PhoneNumber(country_code=62, national_number=int(national))
        return f"+62{national}" if phonenumbers.is_valid_number(number) else None
    try:
        parsed = phonenumbers.parse(value, "ID")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# --- IBAN ------------------------------------------------------------------------------------
# Compact, or in groups of four; the trailing group may be shorter. stdnum checks mod-97 and
# the country's length and format. Trailing groups are dropped one by one until it validates,
# so a following capitalised word ("... 0130 00 PAID") is not swallowed.
_IBAN = re.compile(
    r"(?<![\w-])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![\w-])"
)


def _mod97(value: str) -> bool:
    # A cheap first test (ISO 13616: the country and check digits moved to the end, letters as
    # 10..35, the number mod 97 is 1), so that trimmed candidates skip stdnum's full check.
    compact = value.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1


def ibans(text: str) -> Iterator[Candidate]:
    for m in _IBAN.finditer(text):
        value = m.group(0)
        while True:
            if _mod97(value) and iban.is_valid(value):
                yield "IBAN", m.start(), m.start() + len(value), iban.compact(value)
                break
            cut = value.rfind(" ")
            if cut < 0:
                break
            value = value[:cut]


# --- NPWP (dotted) ---------------------------------------------------------------------------
_NPWP_DOTTED = re.compile(r"(?<![\w.-])\d{2}\.\d{3}\.\d{3}\.\d-\d{3}\.\d{3}(?![\w-]|\.\d)")


def _npwp_key(digits: str) -> str:
    # the 16-digit form of an old number is the 15 digits with a 0 in front
    return digits[1:] if len(digits) == 16 and digits.startswith("0") else digits


def npwps_dotted(text: str) -> Iterator[Candidate]:
    for m in _NPWP_DOTTED.finditer(text):
        digits = npwp.compact(m.group(0))
        if npwp.is_valid(digits):
            yield "ID_NPWP", m.start(), m.end(), _npwp_key(digits)


# --- long numbers: CREDIT_CARD, ID_NIK, ID_NPWP ----------------------------------------------
# Runs of 13 to 19 digits, plain or in groups split by single spaces or dashes. Which kind a
# run is follows from a label before it ("NIK", "NPWP", "kartu"), then from the validators.
_LONG_NUMBER = re.compile(r"(?<![\w.,/+-])\d(?:[ -]?\d){12,18}(?![\w/-]|[.,]\d)")
_KIND_LABEL = re.compile(
    r"\b(?:(?P<nik>nik|ktp|e-?ktp)|(?P<npwp>npwp|tin|tax\s+id)|"
    r"(?P<card>card|kartu|cc|visa|master\s*card|amex|jcb|kredit|credit|debit))\b[^\d\n]{0,14}$",
    re.IGNORECASE,
)
# Issuer prefixes (IIN) and lengths of the card schemes seen in Indonesia: Visa, Mastercard,
# Amex, JCB, Diners, Discover, UnionPay, GPN. A Luhn-valid run without one is not a card.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[4-9]|30|6(?:011|4[4-9]|5|2)|60")
_CARD_LENGTHS = {"4": (13, 16, 19), "34": (15,), "37": (15,), "36": range(14, 20)}
_CARD_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5}")
_REGIONS = numdb.get("id/loc")


def _is_card(digits: str) -> bool:
    prefix = _CARD_PREFIX.match(digits)
    if prefix is None or len(digits) not in _CARD_LENGTHS.get(prefix.group(0), range(16, 20)):
        return False
    return luhn.is_valid(digits)


@functools.lru_cache(maxsize=1024)
def _known_regency(code: str) -> bool:
    """Province and regency (the first 4 digits) both in stdnum's table of Indonesian regions."""
    place = _REGIONS.info(code)
    return len(place) == 2 and bool(place[0][1]) and bool(place[1][1])


def _is_nik(digits: str) -> bool:
    # stdnum's nik.is_valid checks the province and the birth date (women's day + 40); the
    # regency (digits 3-4) must be known too, and the sub-district is never 00. The table
    # lookup is cached: nik.is_valid would walk it again for every candidate.
    if len(digits) != 16 or not digits.isdigit() or digits[4:6] == "00":
        return False
    if not _known_regency(digits[:4]):
        return False
    try:
        nik.get_birth_date(digits)
    except ValidationError:
        return False
    return True


def long_numbers(text: str) -> Iterator[Candidate]:
    for m in _LONG_NUMBER.finditer(text):
        value = m.group(0)
        digits = value.replace(" ", "").replace("-", "")
        label = _KIND_LABEL.search(text, max(0, m.start() - _BEFORE), m.start())
        wanted = label.lastgroup if label else None
        if wanted is None and _labelled_id(text, m.start()):
            continue
        kind = _classify(digits, wanted, _CARD_GROUPS.fullmatch(value) is not None)
        if kind == "ID_NPWP":
            yield kind, m.start(), m.end(), _npwp_key(digits)
        elif kind is not None:
            yield kind, m.start(), m.end(), digits


def _classify(digits: str, wanted: str | None, grouped: bool) -> str | None:
    n = len(digits)
    is_nik = _is_nik(digits)

    def is_npwp() -> bool:  # a 16-digit NPWP is a NIK or 0 + the old 15 digits
        return is_nik or ((n == 15 or digits.startswith("0")) and npwp.is_valid(digits))

    if wanted == "nik" and is_nik:
        return "ID_NIK"
    if wanted == "npwp" and is_npwp():
        return "ID_NPWP"
    if wanted == "card" and _is_card(digits):
        return "CREDIT_CARD"
    if grouped and _is_card(digits):
        return "CREDIT_CARD"
    if is_nik:
        return "ID_NIK"
    if digits.startswith("0") and is_npwp():
        return "ID_NPWP"
    if _is_card(digits):
        return "CREDIT_CARD"
    if is_npwp():
        return "ID_NPWP"
    return None


# --- IP_ADDRESS ------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.-])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
# Version strings shaped like IPv4 ("v1.2.3.4", "versi 10.2.0.1"), and big amounts written
# with dots ("Rp 1.200.100.000", "1.200.100.000 rupiah").
_VERSION_LABEL = re.compile(
    r"(?:\b(?:v|ver|version|versi|build|release|rilis|firmware|fw|app|aplikasi|update|"
    r"patch|sdk|android|ios|driver|rev)\.?)\s*[:=]?\s*$",
    re.IGNORECASE,
)
_AMOUNT_AFTER = re.compile(r"\s*(?:,-|rupiah|idr|ribu|juta|miliar|ekor|unit|pcs)\b", re.I)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})"
    r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)

# Every IPv6 address has two colons with at most four hex digits between: a cheap test first
# (the full pattern would be tried at every hex letter of the text).
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")


def ip_addresses(text: str) -> Iterator[Candidate]:
    for m in _IPV4.finditer(text):
        start, end = m.start(), m.end()
        try:
            address = ipaddress.IPv4Address(m.group(0))
        except ValueError:
            continue
        if _VERSION_LABEL.search(text, max(0, start - _BEFORE), start) or _labelled_id(text, start):
            continue
        if _AMOUNT_AFTER.match(text, end):
            continue
        yield "IP_ADDRESS", start, end, str(address)
    if _IPV6_HINT.search(text) is None:  # most text: no two colons with hex between
        return
    for m in _IPV6.finditer(text):
        value = m.group(0)
        if sum(c.isdigit() for c in value) == 0 or len(value.replace(":", "")) < 4:
            continue
        try:
            address6 = ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield "IP_ADDRESS", m.start(), m.end(), str(address6)
