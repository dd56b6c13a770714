"""PII masking: each kind, its look-alikes, placeholders and restore()."""

from __future__ import annotations

import pytest

from bizosctl.privacy.masking import Masked, Span, detect, mask


def found(text: str, **kw: object) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in detect(text, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text,value",
    [
        ("Kirim ke budi.santoso@example.co.id ya", "budi.santoso@example.co.id"),
        ("Contact: Jane.Doe+billing@mail.example.com.", "Jane.Doe+billing@mail.example.com"),
    ],
)
def test_email_found(text: str, value: str) -> None:
    assert found(text) == [("EMAIL", value)]


@pytest.mark.parametrize(
    "text", ["see user@localhost", "git@host:repo", "an @mention here", "a..b@example.com"]
)
def test_email_look_alikes(text: str) -> None:
    assert [k for k, _ in found(text)] == []


@pytest.mark.parametrize(
    "value",
    [
        "0812-3456-7890",
        "+62 812 3456 7890",
        "6281234567890",
        "(021) 555-1234",
        "021-29345678",
        "+44 20 7946 0958",
        "+1 415 555 2671",
    ],
)
def test_phone_found(value: str) -> None:
    assert found(f"Hubungi {value} besok.") == [("PHONE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "Tanggal 08-12-2024 jatuh tempo",
        "Total Rp 62.500.000 sudah dibayar",
        "Invoice 0812345678901 lunas",
        "order #081234567890 dikirim",
        "kode 081234567",
    ],
)
def test_phone_look_alikes(text: str) -> None:
    assert found(text) == []


def test_same_phone_in_another_format_gets_the_same_placeholder() -> None:
    m = mask("Call 0812-3456-7890 or +62 812 3456 7890, not 0813-1111-2222.")
    assert m.text == "Call <PHONE_1> or <PHONE_1>, not <PHONE_2>."
    assert m.mapping == {"<PHONE_1>": "0812-3456-7890", "<PHONE_2>": "0813-1111-2222"}
    assert m.counts() == {"PHONE": 3}


def test_restore_puts_values_back() -> None:
    m = mask("Email ani@example.com or call 0812-3456-7890.")
    assert m.text == "Email <EMAIL_1> or call <PHONE_1>."
    answer = "I will write to <EMAIL_1> and ring <PHONE_1>; <PHONE_9> is unknown."
    assert m.restore(answer) == (
        "I will write to ani@example.com and ring 0812-3456-7890; <PHONE_9> is unknown."
    )


def test_nothing_found() -> None:
    m = mask("Stok gudang aman minggu ini.")
    assert m == Masked("Stok gudang aman minggu ini.", [], {})
    assert m.restore("ok <EMAIL_1>") == "ok <EMAIL_1>"


def test_spans_point_into_the_original() -> None:
    text = "a@example.com 0812-3456-7890"
    assert detect(text) == [Span("EMAIL", 0, 13), Span("PHONE", 14, 28)]
