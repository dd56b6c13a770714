"""PII masking: find personal data in free text and swap it for stable placeholders.

``mask(text)`` returns the text with ``<EMAIL_1>``, ``<PHONE_2>``... in place of the values and
the mapping to put them back in a model's answer. Detectors are cheap: each kind has one
precompiled candidate pattern and a validator from the field's library (``phonenumbers`` for
phone numbers, ``python-stdnum`` for checksums), so a 2 KB prompt is masked in well under a
millisecond and no per-call object is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import phonenumbers

KINDS = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "IBAN",
    "ID_NIK",
    "ID_NPWP",
    "IP_ADDRESS",
    "PERSON",
)


@dataclass(frozen=True)
class Span:
    """One piece of personal data: its kind and where it is in the original text."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Masked:
    """A masked text, the spans found in the original, and the placeholders' values."""

    text: str
    entities: list[Span]
    #: placeholder -> original value. Never log or print it: it is the personal data.
    mapping: dict[str, str] = field(repr=False)

    def restore(self, text: str) -> str:
        """Put the original values back in ``text`` (a model's answer to the masked text).

        Placeholders the model invented or mangled beyond ``<KIND_n>`` stay as they are.
        """
        if not self.mapping:
            return text
        return _PLACEHOLDER.sub(lambda m: self.mapping.get(m.group(0), m.group(0)), text)

    def counts(self) -> dict[str, int]:
        """How many entities of each kind were found (for the usage ledger; no values)."""
        out: dict[str, int] = {}
        for span in self.entities:
            out[span.kind] = out.get(span.kind, 0) + 1
        return out


_PLACEHOLDER = re.compile(r"<(?:" + "|".join(KINDS) + r")_\d+>")

# A candidate is (start, end, key): ``key`` is the value in one canonical form, so the same
# value written another way (``0812...`` and ``+62 812...``) gets the same placeholder.
_Candidate = tuple[int, int, str]
_Detector = Callable[[str], Iterator[_Candidate]]

# --- EMAIL -----------------------------------------------------------------------------------
# RFC 5322's local part is wider, but what business text carries is this; the domain needs a
# dot and a 2+ letter top-level label, so ``user@localhost`` and ``a@b`` in code stay.
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)


def _emails(text: str) -> Iterator[_Candidate]:
    for m in _EMAIL.finditer(text):
        value = m.group(0)
        if ".." in value:
            continue
        yield m.start(), m.end(), value.lower()


# --- PHONE -----------------------------------------------------------------------------------
# Candidates: an international ``+CC ...`` number, Indonesian ``62...``/``08...`` mobiles and
# ``(0xx)``/``0xx-`` landlines, with spaces, dashes or dots between groups. ``phonenumbers``
# then decides (valid for its region's numbering plan), so ``08-12-2024`` (a date) fails.
_PHONE = re.compile(
    r"(?<![\w+.,/-])"
    r"(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,5}){1,4}"  # +62 812-3456-7890, +44 20 ...
    r"|\(0\d{1,3}\)[ .-]?\d{3,4}(?:[ .-]?\d{3,4}){0,2}"  # (021) 555-1234
    r"|(?:62|0)\d{2,4}(?:[ .-]?\d{2,5}){1,3}"  # 0812 3456 7890, 6281234567890, 021-2934...
    r")"
    r"(?![\w-]|[.,]\d)"
)
# A number right after a currency or an id label is an amount or an id, not a phone.
_NOT_PHONE_BEFORE = re.compile(
    r"(?:\b(?:rp|idr|usd|sgd|eur|no|nr|nomor|inv|invoice|order|po|sku|resi|awb|ref)\.?|[#$€£])"
    r"\s*[:.]?\s*$",
    re.IGNORECASE,
)
_MAX_PHONE_DIGITS = 15  # E.164


def _phones(text: str) -> Iterator[_Candidate]:
    for m in _PHONE.finditer(text):
        value = m.group(0)
        digits = sum(c.isdigit() for c in value)
        if digits < 7 or digits > _MAX_PHONE_DIGITS:
            continue
        if _NOT_PHONE_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            continue
        if value.startswith("62"):
            value = "+" + value
        try:
            number = phonenumbers.parse(value, "ID")
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        yield (
            m.start(),
            m.end(),
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        )


# Order matters where spans overlap: the earlier detector wins (an e-mail holds digits that
# look like a phone; a card number holds a NIK-length run).
_DETECTORS: tuple[tuple[str, _Detector], ...] = (
    ("EMAIL", _emails),
    ("PHONE", _phones),
)


def _find(text: str, names: Iterable[str]) -> list[tuple[str, int, int, str]]:
    taken: list[tuple[str, int, int, str]] = []
    for kind, detector in _DETECTORS:
        for start, end, key in detector(text):
            if any(start < t_end and t_start < end for _, t_start, t_end, _ in taken):
                continue
            taken.append((kind, start, end, key))
    taken.sort(key=lambda t: t[1])
    return taken


def detect(text: str, *, names: Iterable[str] = ()) -> list[Span]:
    """The personal data in ``text``, in order of position.

    Args:
        text: any free text (a prompt, a customer's message).
        names: people's names known to be personal data here (the tenant's members and
            customers), found as ``PERSON`` whatever the generic name rules say.
    """
    return [Span(kind, start, end) for kind, start, end, _ in _find(text, names)]


def mask(text: str, *, names: Iterable[str] = ()) -> Masked:
    """``text`` with each piece of personal data replaced by a ``<KIND_n>`` placeholder.

    The same value gets the same placeholder within one call, also when written another way
    (``0812-3456-7890`` and ``+62 812 3456 7890``). ``names`` as for :func:`detect`.
    """
    found = _find(text, names)
    by_key: dict[tuple[str, str], str] = {}
    numbers: dict[str, int] = {}
    mapping: dict[str, str] = {}
    parts: list[str] = []
    pos = 0
    for kind, start, end, key in found:
        placeholder = by_key.get((kind, key))
        if placeholder is None:
            numbers[kind] = numbers.get(kind, 0) + 1
            placeholder = f"<{kind}_{numbers[kind]}>"
            by_key[(kind, key)] = placeholder
            mapping[placeholder] = text[start:end]
        parts.append(text[pos:start])
        parts.append(placeholder)
        pos = end
    parts.append(text[pos:])
    return Masked(
        text="".join(parts),
        entities=[Span(kind, start, end) for kind, start, end, _ in found],
        mapping=mapping,
    )
