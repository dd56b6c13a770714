"""PII masking: each kind, its look-alikes, placeholders and restore()."""

from __future__ import annotations

from pathlib import Path

import pytest

from bizosctl.privacy import corpus
from bizosctl.privacy.masking import KINDS, Masked, Span, compile_names, detect, mask


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
        "0812.3456.7890",
        "+62 (21) 5551234",
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


def test_phone_in_a_whatsapp_link() -> None:
    assert found("chat https://wa.me/6281234567890 ya") == [("PHONE", "6281234567890")]
    assert found("INV/2024/0812345678 lunas") == []


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


def test_restore_forgives_case_and_spacing_of_placeholders() -> None:
    m = mask("Pak Budi Santoso menunggu.")
    assert (
        m.restore("Kabari < person_1 > dan <Person_1>.") == "Kabari Budi Santoso dan Budi Santoso."
    )


def test_nothing_found() -> None:
    m = mask("Stok gudang aman minggu ini.")
    assert m == Masked("Stok gudang aman minggu ini.", [], {})
    assert m.restore("ok <EMAIL_1>") == "ok <EMAIL_1>"


def test_spans_point_into_the_original() -> None:
    text = "a@example.com 0812-3456-7890"
    assert detect(text) == [Span("EMAIL", 0, 13), Span("PHONE", 14, 28)]


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("kartu 4111 1111 1111 1111 ditolak", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004 expired", "CREDIT_CARD", "5500-0000-0000-0004"),
        ("paid with 4111111111111111 today", "CREDIT_CARD", "4111111111111111"),
        ("Amex 3782 822463 10005 on file", "CREDIT_CARD", "3782 822463 10005"),
        ("IBAN DE89 3704 0044 0532 0130 00 PAID", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("to GB82WEST12345698765432.", "IBAN", "GB82WEST12345698765432"),
        ("NIK 3171011708450001 ok", "ID_NIK", "3171011708450001"),
        ("NIK perempuan 3171015708450001 ok", "ID_NIK", "3171015708450001"),
        ("NPWP 01.234.567.4-012.000 terbit", "ID_NPWP", "01.234.567.4-012.000"),
        ("NPWP 012345674012000 terbit", "ID_NPWP", "012345674012000"),
        ("NPWP 0012345674012000 terbit", "ID_NPWP", "0012345674012000"),
        ("NPWP 3171011708450001 (NIK form)", "ID_NPWP", "3171011708450001"),
        ("from 203.0.113.7.", "IP_ADDRESS", "203.0.113.7"),
        ("host 2001:db8::8a2e:370:7334 down", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("peer fe80::1ff:fe23:4567:890a", "IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
    ],
)
def test_identifier_found(text: str, kind: str, value: str) -> None:
    assert found(text) == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "kartu 4111 1111 1111 1112 ditolak",  # fails Luhn
        "Nomor seri 1234567890123456",  # fails Luhn and NIK
        "NIK 9971011708450001",  # no such province
        "NIK 3199011708450001",  # no such regency
        "NIK 3171013213450001",  # month 13
        "NIK 3171017208450001",  # day 72 - 40 = 32
        "NPWP 01.234.567.5-012.000",  # wrong check digit
        "IBAN DE89 3704 0044 0532 0130 01",  # fails mod-97
        "versi 10.2.0.1 rilis",
        "build v1.2.3.4",
        "Release 4.2.1.0 fixes it",
        "Rp 1.200.100.000 masuk",
        "1.250.000.000 rupiah",
        "at 10:30:00 sharp",
        "MAC 00:1A:2B:3C:4D:5E",
        "999.1.1.1 is not an address",
        "Order #4111111111111111 shipped",
        "SKU 8991234567890 habis",
    ],
)
def test_identifier_look_alikes(text: str) -> None:
    assert found(text) == []


def test_card_label_decides_between_nik_and_card() -> None:
    # a 16-digit number that passes Luhn and the NIK rules is what its label says
    number = "3578011708450005"  # Surabaya, and a JCB prefix
    assert found(f"NIK {number}") == [("ID_NIK", number)]
    assert found(f"kartu kredit {number}") == [("CREDIT_CARD", number)]


def test_same_value_other_format_same_placeholder_for_every_kind() -> None:
    m = mask(
        "4111 1111 1111 1111 / 4111-1111-1111-1111; "
        "01.234.567.4-012.000 = 0012345674012000; "
        "GB82 WEST 1234 5698 7654 32 = GB82WEST12345698765432; "
        "Budi Santoso = budi santoso; 2001:db8::1 = 2001:0db8:0:0:0:0:0:1",
        names=["Budi Santoso"],
    )
    assert m.text == (
        "<CREDIT_CARD_1> / <CREDIT_CARD_1>; <ID_NPWP_1> = <ID_NPWP_1>; <IBAN_1> = <IBAN_1>; "
        "<PERSON_1> = <PERSON_1>; <IP_ADDRESS_1> = <IP_ADDRESS_1>"
    )
    assert m.mapping["<CREDIT_CARD_1>"] == "4111 1111 1111 1111"


@pytest.mark.parametrize(
    "text,names",
    [
        ("Pak [Budi] minta nota", ()),
        ("Ibu [Siti Rahayu] sudah bayar", ()),
        ("Mr. [John Smith] called", ()),
        ("Dr. Ir. [Bambang] datang", ()),
        ("[Muhammad Rizky Pratama] cuti", ()),
        ("[Sarah] confirmed", ()),
        ("[Will Turner] will call", ()),
        ("invoice for [Kresnanda Wijayakusuma] today", ("Kresnanda Wijayakusuma",)),
        ("invoice for [kresnanda wijayakusuma] today", ("Kresnanda Wijayakusuma",)),
        ("[Wijayakusuma] paid", ("Kresnanda Wijayakusuma",)),
        ("paket untuk [Wiryo]", ("Wiryo",)),
        ("Bapak [Kresnanda] datang", ("Bapak Kresnanda",)),  # honorific out of the entry
        ("[I Made Suarta] datang", ()),
        ("[Ni Luh Ayu Kartika] pesan", ()),
        ("transfer a.n. [Sri Mulyani] masuk", ()),
        ("atas nama [Joko Widagdo]", ()),
        ("Selamat pagi, saya [Lestiani Puspitasari] dari gudang", ()),
        ("Hello, my name is [Xavier Quint]", ()),
        ("Customer [Rahmat] complained", ()),
        # cue words and closings before names in no list (#16)
        ("Regards, [Chen Wei]", ()),
        ("Regards,\n[Alexander Brandt]", ()),
        ("Signed by [Ayu Larasati] for the buyer", ()),
        ("Hormat kami, [Sutrisno Hadi]", ()),
        ("Nama: [Agung Prasetyo]", ()),
        ("PIC: [Wisnu Hartanto]", ()),
        ("Hubungi [Siska Permatasari] untuk jadwal", ()),
        ("diterima oleh [Suparmi] pukul 10", ()),
        ("Driver [Sukirman] terlambat", ()),
        ("[Adrianus Kristanto] akan menggantikan", ()),
        ("[Margaretha Sinaga] minta nota", ()),
        ("Dear Ms. [Patel], thank you", ()),
    ],
)
def test_person_found(text: str, names: tuple[str, ...]) -> None:
    plain = text.replace("[", "").replace("]", "")
    want = [("PERSON", v.split("]")[0]) for v in text.split("[")[1:]]
    assert found(plain, names=names) == want


@pytest.mark.parametrize(
    "text",
    [
        "Mark the invoice as paid",
        "Will the shipment arrive?",
        "May sales were up",
        "Toko Budi Makmur minta nota",
        "PT Sinar Jaya Abadi memesan",
        "Kantor di Jl. Sudirman No. 45",
        "Indah sekali display toko",
        "Bapak/Ibu yang terhormat",
        "Ibu Kota pindah",
        "Reply to <PERSON_1> please",
        "the word jaya in lower case",
        "I Made a mistake in the invoice",
        "transfer atas nama PT Maju Jaya",
        "a.n. Bapak",
        "Minta tolong cek stok",
        "Mi goreng 2 bungkus",
        "Ada barang rusak",
        "Hari Raya Idul Fitri kantor libur",
        "Customer Service buka 24 jam",
        "saya Senin datang",
        # cue words before places, desks, brands and products (#16)
        "Hubungi Admin Gudang untuk detail stok",
        "Pesan dari Tim Marketing: promo berakhir",
        "Kiriman dari Surabaya tiba besok",
        "Barang dari Gudang Cakung sudah dikirim",
        "Kiriman dari Sleman tertunda",
        "Contact Human Resources for leave requests",
        "Meeting with Procter Gamble on Wednesday",
        "Signed Purchase Order attached",
        "Email from Google Workspace: storage full",
        "We shipped the Dell Latitude laptops",
        "Kantor Pajak Pratama Jakarta Selatan meminta dokumen",
        "Terima kasih, Tim Gudang",
        "PT Maju Jaya mengirim ke Jakarta Selatan",
    ],
)
def test_person_look_alikes(text: str) -> None:
    assert found(text, names=["PT Sinar Jaya Abadi", "Jaya"]) == []


def test_honorific_stays_out_of_the_span() -> None:
    m = mask("Terima kasih Pak Gunawan dan Ibu Sri Wahyuni.")
    assert m.text == "Terima kasih Pak <PERSON_1> dan Ibu <PERSON_2>."


# --- the corpus -------------------------------------------------------------------------------

CORPUS = corpus.load(Path(__file__).parent / "data" / "pii_corpus.txt")


def test_corpus_covers_every_kind_and_enough_negatives() -> None:
    kinds = {span.kind for sample in CORPUS.samples for span in sample.spans}
    assert kinds == set(KINDS)
    assert len(CORPUS.samples) >= 300
    assert sum(1 for sample in CORPUS.samples if not sample.spans) >= 80


@pytest.mark.parametrize("sample", CORPUS.samples, ids=lambda s: f"line{s.line}")
def test_corpus_line_gives_exactly_its_spans(sample: corpus.Sample) -> None:
    got = detect(sample.text, names=CORPUS.names)
    assert [(s.kind, sample.text[s.start : s.end]) for s in got] == [
        (s.kind, sample.text[s.start : s.end]) for s in sample.spans
    ]
    assert got == sample.spans


def test_compiled_names_find_exactly_what_the_names_find() -> None:
    # what the LLM gate passes: the tenant's names compiled once (kept with them)
    compiled = compile_names(CORPUS.names)
    for sample in CORPUS.samples:
        assert detect(sample.text, names=compiled) == sample.spans, sample.line
        assert mask(sample.text, names=compiled) == mask(sample.text, names=CORPUS.names)


def test_the_tokens_are_those_of_the_pattern() -> None:
    from bizosctl.privacy import persons

    texts = [sample.text for sample in CORPUS.samples] + [
        "O'Brien's d'Artagnan -- Jean-Luc, x-ray 4ever a1b2 _ana_ Ni’Luh été ²x",
        "", "123 456", "aa aa aa aaa a", "'-'a-'b", "Straße İstanbul 中文 अब",
    ]  # fmt: skip
    for text in texts:
        expected = [(m.start(), m.end(), m.group()) for m in persons._TOKEN.finditer(text)]
        assert persons._tokens(text) == expected, text


def test_corpus_masked_text_holds_no_value_in_any_form() -> None:
    for sample in CORPUS.samples:
        masked = mask(sample.text, names=CORPUS.names)
        folded = masked.text.casefold()
        digits = "".join(c for c in masked.text if c.isdigit())
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            assert value.casefold() not in folded, (sample.line, span.kind)
            value_digits = "".join(c for c in value if c.isdigit())
            if len(value_digits) >= 7:  # a number, written any way
                assert value_digits not in digits, (sample.line, span.kind)
        assert masked.restore(masked.text) == sample.text


HOLDOUT4_PERSON_RECALL = 0.95


@pytest.mark.parametrize(
    "name,person_recall",
    [
        ("pii_holdout.txt", 0.95),
        ("pii_holdout2.txt", 0.95),
        # measured at 0.90 and left as it was; its misses were seen before the cue and
        # surname rules that now find them
        ("pii_holdout3.txt", 0.95),
        # written before those rules and never tuned on
        ("pii_holdout4.txt", HOLDOUT4_PERSON_RECALL),
        # the lines those rules were tuned on
        ("pii_persons_dev.txt", 0.95),
    ],
)
def test_holdout_meets_the_recall_and_false_hit_targets(name: str, person_recall: float) -> None:
    # Lines written after the rules: not every line is exact, the targets hold:
    # recall >= 0.95 on every kind, at most 5 negative lines with a hit.
    held = corpus.load(Path(__file__).parent / "data" / name)
    expected: dict[str, int] = {}
    hit: dict[str, int] = {}
    false_lines = 0
    for sample in held.samples:
        got = set(detect(sample.text, names=held.names))
        if not sample.spans and got:
            false_lines += 1
        for span in sample.spans:
            expected[span.kind] = expected.get(span.kind, 0) + 1
            hit[span.kind] = hit.get(span.kind, 0) + (span in got)
    assert set(expected) == set(KINDS)
    wanted = {k: person_recall if k == "PERSON" else 0.95 for k in expected}
    assert {k: hit[k] / n for k, n in expected.items() if hit[k] / n < wanted[k]} == {}
    assert false_lines <= 5


def test_corpus_marker_parsing() -> None:
    text, spans = corpus.parse_line("Hi [[PERSON|Ani]], mail [[EMAIL|a@b.co]].")
    assert text == "Hi Ani, mail a@b.co."
    assert spans == [Span("PERSON", 3, 6), Span("EMAIL", 13, 19)]
    with pytest.raises(ValueError, match="unknown kind 'NAME'"):
        corpus.parse_line("[[NAME|x]]")
