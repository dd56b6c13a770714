"""Labelled samples for measuring the masking: one line of text with its PII marked inline.

A line reads ``Kirim ke [[EMAIL|ani@example.com]] ya``: each ``[[KIND|value]]`` is one expected
span, and the text is the line with the markup removed. Lines starting with ``#`` are comments,
except ``#names: A; B`` which adds names to the corpus's dictionary (the ``names`` argument of
:func:`bizosctl.privacy.masking.detect`, as a tenant's members and customers would be).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bizosctl.privacy.masking import KINDS, Span

_MARK = re.compile(r"\[\[([A-Z_]+)\|(.+?)\]\]")


@dataclass(frozen=True)
class Sample:
    """One corpus line: its number in the file, the plain text and the expected spans."""

    line: int
    text: str
    spans: list[Span]


@dataclass(frozen=True)
class Corpus:
    samples: list[Sample]
    names: list[str]


def parse_line(marked: str) -> tuple[str, list[Span]]:
    """The text of one marked line and its expected spans."""
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    length = 0
    for m in _MARK.finditer(marked):
        kind, value = m.group(1), m.group(2)
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} in {marked!r}")
        before = marked[pos : m.start()]
        parts.append(before)
        length += len(before)
        spans.append(Span(kind, length, length + len(value)))
        parts.append(value)
        length += len(value)
        pos = m.end()
    parts.append(marked[pos:])
    return "".join(parts), spans


def load(path: Path) -> Corpus:
    """Read a corpus file (UTF-8, the format above)."""
    samples: list[Sample] = []
    names: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.startswith("#names:"):
            names.extend(n.strip() for n in raw[len("#names:") :].split(";") if n.strip())
            continue
        if not raw.strip() or raw.startswith("#"):
            continue
        text, spans = parse_line(raw)
        samples.append(Sample(number, text, spans))
    return Corpus(samples, names)
