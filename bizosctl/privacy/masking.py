"""PII masking: find personal data in free text and swap it for stable placeholders.

``mask(text)`` returns the text with ``<EMAIL_1>``, ``<PHONE_2>``... in place of the values and
the mapping to put them back in a model's answer. Detectors are cheap: each kind has one
precompiled candidate pattern and a validator from the field's library (see
:mod:`bizosctl.privacy.identifiers` and :mod:`bizosctl.privacy.persons`), so no per-call
object is built and a 2 KB prompt is masked in about a millisecond.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bizosctl.privacy import identifiers, persons
from bizosctl.privacy.identifiers import Candidate

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

        Models copy placeholders back with other case or spacing (``< person_1 >``): those are
        restored too. Placeholders the model invented (no such number) stay as they are.
        """
        if not self.mapping:
            return text

        def value(m: re.Match[str]) -> str:
            key = f"<{m.group(1).upper()}_{m.group(2)}>"
            return self.mapping.get(key, m.group(0))

        return _PLACEHOLDER.sub(value, text)

    def counts(self) -> dict[str, int]:
        """How many entities of each kind were found (for the usage ledger; no values)."""
        out: dict[str, int] = {}
        for span in self.entities:
            out[span.kind] = out.get(span.kind, 0) + 1
        return out


#: names for :func:`mask` and :func:`detect`: the names, or :func:`compile_names` of them
Names = Iterable[str] | persons.Dictionary


def compile_names(names: Iterable[str]) -> persons.Dictionary:
    """``names`` compiled once for many calls of :func:`mask` (the LLM gate keeps one per
    tenant with its names)."""
    return persons.dictionary(names)


_PLACEHOLDER = re.compile(r"<\s*(" + "|".join(KINDS) + r")_(\d+)\s*>", re.IGNORECASE)

# Order matters where spans overlap: the earlier detector wins (an e-mail or an IBAN holds
# digits that look like a phone; a NIK-length run inside a card is the card).
_DETECTORS = (
    identifiers.emails,
    identifiers.ibans,
    identifiers.npwps_dotted,
    identifiers.long_numbers,
    identifiers.ip_addresses,
    identifiers.phones,
)


def _find(text: str, names: Names) -> list[Candidate]:
    taken: list[Candidate] = []  # kept sorted by start; spans in it never overlap
    starts: list[int] = []
    candidates = itertools.chain(
        *(detector(text) for detector in _DETECTORS), persons.persons(text, names)
    )
    for candidate in candidates:
        _, start, end, _ = candidate
        at = bisect.bisect_left(starts, start)
        if at > 0 and taken[at - 1][2] > start:  # the one before reaches into it
            continue
        if at < len(taken) and taken[at][1] < end:  # it reaches into the one after
            continue
        taken.insert(at, candidate)
        starts.insert(at, start)
    return taken


def detect(text: str, *, names: Names = ()) -> list[Span]:
    """The personal data in ``text``, in order of position.

    Args:
        text: any free text (a prompt, a customer's message).
        names: people's names known to be personal data here (the tenant's members and
            customers), found as ``PERSON`` whatever the generic name rules say; or
            :func:`compile_names` of them (the same result, without compiling them again).
    """
    return [Span(kind, start, end) for kind, start, end, _ in _find(text, names)]


def mask(text: str, *, names: Names = ()) -> Masked:
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
