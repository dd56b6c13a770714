"""PERSON detection without a language model: a dictionary, name lists and honorifics.

Three sources, cheapest first:

- the caller's dictionary (the tenant's own members' and customers' names), matched
  case-insensitively as whole names, and its single tokens as given names;
- a capitalised word after an honorific (``Pak``, ``Ibu``, ``Mr``...; the honorific stays out
  of the span) or after ``a.n.``/``atas nama``/``saya``/``my name is``, and up to two more
  capitalised words after it;
  Balinese names from their ``I``/``Ni`` and birth-order prefix (``I Made Suarta``);
- a known given name (English: the US census lists of the ``names`` package; Indonesian: the
  list in ``data/names_id.txt``), alone (a mononym) or followed by up to two capitalised words.

Given names that are also common words (``Will``, ``May``, ``Bagus``, ``Indah``) count only
when a known surname or given name follows them, or an honorific or a role (``Customer``,
``Kurir``) precedes them; words after an
organisation or place marker (``PT``, ``Toko``, ``Jl.``, ``Bank``) are not people.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Candidate = tuple[str, int, int, str]

_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")

HONORIFICS = frozenset(
    "Pak Bu Ibu Bapak Mr Mrs Ms Miss Mister Mdm Madam Sir Dr Prof Ir Sdr Sdri Saudara Saudari "
    "Mas Mbak Kak Bang Tuan Nyonya Nona Haji Hj Drs Dra".split()
)
# Capitalised words that end a name: function words, greetings, days, months, places, and the
# words of business text that start sentences.
_STOP = frozenset(
    """
    The A An And Or Of In On At For To From With By As Is Are Was Be This That These Those It
    Dear Hi Hello Thanks Thank Please Regards Best Cheers Team Sales Support Admin Customer
    Yth Dengan Hormat Terima Kasih Dan Atau Di Ke Dari Untuk Yang Ini Itu Akan Sudah Belum
    Bisa Mohon Tolong Selamat Pagi Siang Sore Malam Salam Halo Tim Kami Kita Saya Anda Beliau
    Senin Selasa Rabu Kamis Jumat Jum'at Sabtu Minggu Monday Tuesday Wednesday Thursday Friday
    Saturday Sunday January February March April May June July August September October
    November December Januari Februari Maret Mei Juni Juli Agustus Oktober Desember
    Jakarta Surabaya Bandung Medan Semarang Makassar Yogyakarta Jogja Bali Denpasar Bekasi
    Tangerang Depok Bogor Malang Solo Palembang Batam Indonesia Singapore Singapura Kota
    Invoice Order Faktur Pesanan Total Payment Pembayaran Transfer Stok Stock Gudang Barang
    Via Re Fwd Cc Bcc Subject Note Catatan Mr Mrs Ms Pak Bu Ibu Bapak
    Minta Bilang Kabari Kirim Kirimkan Cek Ambil Bantu Coba Hubungi Contact Signed Sincerely
    """.split()
)
# Capitalised words that are no part of a person's name: departments, desks, places, brands,
# products. A cue word ("dari", "contact") before them is no sign of a person.
_NOT_NAME = frozenset(
    """
    Service Services Center Centre Call Desk Help Helpdesk Office Branch Head Department
    Departemen Divisi Division Bagian Unit Kantor Cabang Pusat Dinas Kementerian Badan
    Direktur Direksi Utama Marketing Finance Keuangan Legal Accounting Akuntansi Procurement
    Purchasing Pembelian Penjualan Operations Operasional Logistics Logistik Warehouse
    Security Keamanan Resepsionis Reception Board Committee Panitia Manajemen Management
    Selatan Utara Barat Timur Tengah Baru Pusat Besar Kecil Jawa Sumatra Sumatera Kalimantan
    Sulawesi Papua Lombok Kuala Lumpur Jepang Japan China Korea Malaysia Thailand Vietnam
    Google Microsoft Apple Samsung Dell Lenovo Asus Acer Xiaomi Oppo Vivo Huawei Sony Canon
    Toyota Honda Yamaha Suzuki Daihatsu Mitsubishi Nissan Hyundai Shopee Tokopedia Lazada
    Gojek Grab Bukalapak Blibli Traveloka Telkomsel Indosat Telkom Pertamina Unilever Nestle
    Danone Indomie Wardah Workspace Teams Drive Sheets Excel Zoom WhatsApp Instagram Facebook
    Galaxy Latitude ThinkPad iPhone MacBook Windows Android Series Promo Gratis Ongkir
    Human Resources Hotline Layanan Care Purchase Order Regards Department Team
    Chairman Salesman Woman German Roman Superman Batman Pokemon Sultan Subway Superindo
    Supermarket Support Surat Sumber Sudah Summary Subject Submit Sukses Sunday Superior
    Sleman Purworejo Tokyo Kyoto Sukabumi Sumedang Subang Sukoharjo Sumenep Sumbawa Sumba
    Surakarta Sunter Sudirman Kebonsari Jatisari Cirebon Karawang Cikarang Cibitung Cakung
    """.split()
)
# After one of these, the capitalised words are a company, a shop, a street or a place.
_ORG_BEFORE = frozenset(
    """
    PT CV UD Tbk Toko Warung Apotek Klinik Bank Hotel Gedung Jl Jln Jalan Gang Gg Kampus
    Universitas Sekolah Koperasi Yayasan Masjid Gereja Kabupaten Kab Kecamatan Kec Desa
    Kelurahan Provinsi Kota Rumah Makan Restoran Cafe Kafe Mall Plaza Pasar Perumahan Komplek
    St Lake Mount Fort Port Saint San Santa University Hari Idul Tahun
    """.split()
)
_ORG_AFTER = frozenset(
    """
    Inc Ltd Llc Corp Corporation Company Co Group Holdings Motor Motors Jaya Abadi Makmur
    Sentosa Mandiri Sejahtera Indah Persada Perkasa Utama Raya Tbk Bank Hotel Mart Store Shop
    Street Road Avenue Center Centre Plaza Tower Mall Express Logistics Trading Foods
    Consulting Solutions Systems Studio Bakery Laundry Motor Cell Ponsel Elektronik Pte GmbH
    AG BV NV SA Sdn Bhd Plc LLP Pty
    """.split()
)
# Given names that are also ordinary words: a name only with company (a surname after them,
# or an honorific before).
_AMBIGUOUS = frozenset(
    """
    Will May June April August Mark Bill Grant Rose Hope Faith Joy Dawn Ray Penny Sandy Art
    Frank Guy Jack Chase Lane Miles Page Price Sterling Summer Autumn Winter Holly Ivy Iris
    Daisy Violet Ruby Pearl Crystal Amber Jade Star Rich Don Van Les Major Prince King Earl
    Duke Royal Sonny Buddy Rocky Lucky Happy Chance Cash Carol Sue Pat Max Gene Bob Rod Doc
    Long Young Love Light Angel Harmony Destiny Trinity Unity Liberty Precious Genesis Justice
    Ace Bud Clay Cliff Dale Glen Heath Forest Rock Stone Wood Brook Robin Ginger Candy Cherry
    Honey Sugar Lemon Jan Sol Sun Sunny Man Son Ma Mo Ok Al Ed Dan Tim Else
    Made Gede Tari Lestari Teguh Slamet Rahmat Iman Surya Guntur Citra Mega Kurnia Satria Tri
    Dwi Eka Sri Nur Titik Indah Bagus Jaya Agung Cahaya Mulia Putra Putri Sari Dewi Intan
    Bunga Bintang Ayu Suci Ada Aja Bibi Cara Dong Kali Kasi Keren Kira Mana Minta Oma Pura
    Karena Tanya Sang Era Yoga Carry Many My Season See So Soon Bell Bee Buck Dot Echo Fawn
    Fern Gay Lady Lean Loan Moon Nova Pa Sage Tiny Un Viva Ward Ping Song Hang Mac Bening
    Melati Gading Bakti Tegar Pandu Galang Puji Dharma Sukma Cahya Maya Ganjar
    Tenant Regional General Ultra Premium Gold Silver Platinum Basic Pro Lite
    Apple Amazon Jordan Paris Victoria Florence Georgia Virginia Carolina Dakota Austin
    Houston Lincoln China India Asia Camry Avanza Honda Mercedes Lexus Tesla
    """.split()
)

# Balinese names start with I (men) or Ni (women) and a birth-order name: I Made Suarta.
_BALI_PREFIX = frozenset({"I", "Ni"})
_BALI_ORDER = frozenset("Wayan Made Nyoman Ketut Putu Kadek Komang Gede Luh Nengah Gusti".split())
# "a.n." / "atas nama" (on behalf of): a name follows, as on transfer slips and invoices.
# "saya" / "my name is" / "I'm" (introducing oneself), a closing ("Regards,", "Hormat kami,"),
# a signature ("Signed by") or a header field ("Nama:", "From:"): the same.
_CUE = re.compile(
    r"(?:\ba\.\s?n\.|\batas\s+nama|\bsaya|\bmy\s+name\s+is|\bI'?m|\bI\s+am"
    r"|\bregards,|\bsigned\s+by|\bsigned[,:]|\bsincerely,|\bhormat\s+(?:kami|saya),"
    r"|\bsalam(?:\s+hangat)?,|\bcheers,|\bthanks,|\bthank\s+you,|\bterima\s+kasih,"
    r"|\bbest,|\battn\.?:?|\bdear|\bhi|\bhello|\bhalo|\bhai"
    r"|\b(?:nama|penerima|pengirim|dari|from|kepada|to|contact(?:\s+person)?|kontak|cp|pic"
    r"|penanggung\s+jawab|approved\s+by|disetujui\s+oleh)\s*:"
    r")\s*$",
    re.IGNORECASE,
)
# Words after which two or three capitalised words are a person when one of them reads as a
# name (a listed given or family name, or a Javanese/Indonesian name's shape), unless they
# name a place, a company or a desk ("hubungi Admin Gudang", "dari Dinas Kesehatan"):
# contact, hubungi, dari, kepada, oleh, by, with, ask, minta, kabari, bilang ke, forward to.
_WEAK_CUE = re.compile(
    r"(?:\bcontact|\bhubungi(?:\s+saja)?|\bdari|\bkepada|\bfrom|\bwith|\bdengan|\bsama"
    r"|\boleh|\bby|\bask|\btell|\bminta|\bkabari|\bbilang\s+ke|\bke|\bto|\band|\bdan"
    r"|\bforward\s+(?:this|it)\s+to"
    r")\s+$",
    re.IGNORECASE,
)
# The last word of each cue above and below, casefolded (tokens join letters across ' and -).
_CUE_LAST = frozenset(
    "n nama saya is i'm im am regards by signed sincerely kami salam hangat cheers thanks "
    "you kasih best attn dear hi hello halo hai penerima pengirim dari from kepada to contact "
    "person kontak cp pic jawab oleh".split()
)
_WEAK_CUE_LAST = frozenset(
    "contact hubungi saja dari kepada from with dengan sama oleh by ask tell minta kabari ke "
    "to and dan".split()
)
# The shape of many Javanese and Indonesian names that are in no list: Su- (Suparmi,
# Sutarno) and endings such as -anto, -wati, -ningsih, -yono, -sari.
_NAME_SHAPE = re.compile(
    r"(?:Su[bcdgjklmnprtwy][a-z]{3,}"
    r"|[A-Z][a-z]{2,}(?:anto|anti|yanto|yanti|wati|ningsih|ningrum|yono|iyono|sono|arno"
    r"|armi|arni|ardi|ardo|sari|iyah|udin|uddin|ansyah|syah|wan|man|mah|nah|jo|yo))"
)

# The endings of Javanese and Indonesian surnames in no list (Kristanto, Wicaksono).
_SURNAME_SHAPE = re.compile(
    r"[A-Z][a-z]{2,}(?:anto|yanto|ianto|wati|ningsih|ningrum|yono|iyono|sono|wijoyo|harjo)"
)

# A role before a given name that is also a word makes it a name: "Customer Rahmat".
_ROLE = frozenset(
    "Customer Pelanggan Client Klien Kurir Courier Driver Sopir Supir Kasir Cashier Admin CS "
    "Staff Staf Teknisi Technician Sales Manager Supervisor Owner".split()
)
# Roles that are only ever followed by a person's name (not "Customer Service", "Sales
# Report"): the capitalised word after one is a name even in no list ("Driver Sukirman").
_PERSON_ROLE = frozenset(
    "Kurir Courier Driver Sopir Supir Kasir Cashier Teknisi Technician Nasabah Pelanggan".split()
)

_DATA = "data/names_id.txt"


@functools.cache
def _name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, family names), title-cased; loaded once, on first use."""
    given: set[str] = set()
    family: set[str] = set()
    census = importlib.resources.files("names")
    for name, into in (
        ("dist.male.first", given),
        ("dist.female.first", given),
        ("dist.all.last", family),
    ):
        for line in census.joinpath(name).read_text().splitlines():
            into.add(line.split(" ", 1)[0].title())
    section = given
    for line in importlib.resources.files(__package__).joinpath(_DATA).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = given if line == "[given]" else family
            continue
        section.add(line)
    return frozenset(given - _STOP), frozenset(family - _STOP)


#: How many of the census's most frequent surnames are evidence of a name: the whole list
#: (88,000) holds most capitalised words ("Bridge", "Service", "Gamble").
_COMMON_SURNAMES = 500
# Indonesian family names that are also words or given names ("Pratama": first): no evidence
# on their own that the word before them is a given name.
_WORDLIKE_FAMILY = frozenset(
    "Pratama Putra Putri Utama Jaya Purnama Permana Rahayu Tanjung Hakim Kusuma Pratiwi "
    "Nugraha Pranata Pradana Prasetya Wiguna Winata Lesmana Budiman Maharani Kartika Mahendra "
    "Ramadhan Salim Hasan Iskandar Halim Purba Azhari".split()
)


@functools.cache
def _surnames() -> tuple[frozenset[str], frozenset[str]]:
    """(surnames that are evidence of a name: the census's most frequent and the Indonesian
    list; Indonesian family names distinct enough to make the capitalised word before them a
    given name: "Margaretha Sinaga")."""
    census = importlib.resources.files("names").joinpath("dist.all.last").read_text()
    top = {line.split(" ", 1)[0].title() for line in census.splitlines()[:_COMMON_SURNAMES]}
    indonesian: set[str] = set()
    section = ""
    for line in importlib.resources.files(__package__).joinpath(_DATA).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[family]":
            indonesian.add(line)
    given, _ = _name_lists()
    drop = _STOP | _AMBIGUOUS | _NOT_NAME | _ORG_AFTER | _ROLE
    distinct = indonesian - given - _WORDLIKE_FAMILY - drop
    return frozenset((top | indonesian) - drop), frozenset(distinct)


@dataclass(frozen=True)
class Dictionary:
    """The caller's names compiled for :func:`persons` (see :func:`dictionary`)."""

    #: the names' casefolded words by first word, longest name first
    index: dict[str, list[tuple[str, ...]]]
    #: their single words (as written and title-cased), given names whatever the lists say
    known: frozenset[str]


def dictionary(names: Iterable[str]) -> Dictionary:
    """``names`` compiled once, for a caller that masks many texts with the same names (the
    LLM gate keeps one per tenant); the same as passing the names to :func:`persons`."""
    return Dictionary(*_dictionary(tuple(names)))


@functools.lru_cache(maxsize=64)
def _dictionary(names: tuple[str, ...]) -> tuple[dict[str, list[tuple[str, ...]]], frozenset[str]]:
    """Index of the caller's names by first token (longest first), and their single tokens."""
    index: dict[str, list[tuple[str, ...]]] = {}
    tokens: set[str] = set()
    for name in names:
        found = _TOKEN.findall(name)
        while found and found[0].title() in HONORIFICS:  # "Bapak Budi": the name is "Budi"
            found = found[1:]
        if not found or any(w in _ORG_BEFORE or w in _ORG_AFTER for w in found):
            continue  # a company among the customers: not a person
        words = tuple(w.casefold() for w in found)
        index.setdefault(words[0], []).append(words)
        tokens.update(v for w in found if len(w) > 2 for v in (w, w.title()))
    for entries in index.values():
        entries.sort(key=len, reverse=True)
    return index, frozenset(tokens - _STOP - HONORIFICS - _ORG_AFTER)


def _name_shaped(word: str) -> bool:
    # Title case, also McDonald / O'Brien; not ALL CAPS (codes, acronyms, placeholders)
    return len(word) > 1 and word[0].isupper() and not word[1:].isupper()


def persons(text: str, names: Iterable[str] | Dictionary = ()) -> Iterator[Candidate]:
    """PERSON candidates in ``text``; ``names`` is the caller's dictionary of known names
    (or :func:`dictionary` of them)."""
    given, _ = _name_lists()
    family, distinct = _surnames()
    if isinstance(names, Dictionary):
        index, known = names.index, names.known
    else:
        index, known = _dictionary(tuple(names))
    toks = _tokens(text)
    n = len(toks)

    def spaced(i: int) -> bool:  # token i+1 follows token i after exactly one space
        return i + 1 < n and toks[i + 1][0] == toks[i][1] + 1 and text[toks[i][1]] == " "

    def run(i: int, limit: int) -> int:
        """Index after the capitalised words from i that can be part of a name (at most limit)."""
        j = i
        while j < n and j - i < limit and _name_shaped(toks[j][2]) and toks[j][2] not in _STOP:
            if toks[j][2] in HONORIFICS or (j > i and toks[j][2] in _ORG_AFTER):
                break
            if not spaced(j):
                return j + 1
            j += 1
        return j

    def named(i: int, limit: int) -> int:
        """:func:`run`, cut before a word that is no part of a person's name."""
        stop = run(i, limit)
        for j in range(i, stop):
            if toks[j][2] in _NOT_NAME or toks[j][2] in _ROLE:
                return j
        return stop

    i = 0
    while i < n:
        start, _, word = toks[i]
        if word in _ORG_BEFORE:  # the capitalised words after it name the organisation
            i += 1
            while (
                i < n
                and text[toks[i - 1][1] : toks[i][0]] in (" ", ". ")
                and toks[i][2][0].isupper()
            ):
                i += 1
            continue
        entries = index.get(word.casefold()) if index else None
        if entries:
            hit = _dictionary_hit(text, toks, i, entries)
            if hit:
                yield "PERSON", start, toks[hit - 1][1], _key(text, toks, i, hit)
                i = hit
                continue
        if not word[0].isupper():  # most words: every rule below starts with a capital
            i += 1
            continue
        if word in _BALI_PREFIX and spaced(i) and toks[i + 1][2] in _BALI_ORDER:
            stop = run(i + 1, 4)  # I Made Suarta, Ni Luh Ayu Kartika
            if stop > i + 2:
                yield "PERSON", start, toks[stop - 1][1], _key(text, toks, i, stop)
                i = stop
                continue
        if (
            spaced(i)
            and _name_shaped(word)
            and word not in _STOP
            and word not in _NOT_NAME
            and word not in _AMBIGUOUS
            and word not in _ROLE
            and word not in _ORG_AFTER
            and word not in HONORIFICS
            and _name_shaped(toks[i + 1][2])
            and (toks[i + 1][2] in distinct or _SURNAME_SHAPE.fullmatch(toks[i + 1][2]))
        ):
            stop = named(i, 3)  # "Margaretha Sinaga", "Adrianus Kristanto": a surname's shape
            if stop > i + 1 and not _org_follows(toks, stop):
                yield "PERSON", start, toks[stop - 1][1], _key(text, toks, i, stop)
                i = stop
                continue
        if _name_shaped(word) and word not in _STOP and word not in _NOT_NAME and i > 0:
            # The cue patterns end right before the word: the word before must end one (a
            # set lookup first; the pattern only when it might).
            before = toks[i - 1][2].casefold()
            strong = before in _CUE_LAST and _CUE.search(text, max(0, start - 24), start)
            weak = not strong and before in _WEAK_CUE_LAST
            weak = weak and _WEAK_CUE.search(text, max(0, start - 24), start) is not None
            role = toks[i - 1][2] in _PERSON_ROLE and toks[i - 1][1] + 1 == start
            if strong or weak or role:
                stop = named(i, 3)
                # "a.n. Sri Mulyani", "Regards, Chen Wei"; "hubungi Siska Permatasari"
                if weak and not strong and not role:
                    weak = any(
                        toks[j][2] in given
                        or toks[j][2] in family
                        or toks[j][2] in known
                        or _NAME_SHAPE.fullmatch(toks[j][2])
                        for j in range(i, stop)
                    )
                if stop > i and not _org_follows(toks, stop) and (strong or weak or role):
                    yield "PERSON", start, toks[stop - 1][1], _key(text, toks, i, stop)
                    i = stop
                    continue
        if word in HONORIFICS and _name_shaped(word):
            j = i + 1
            while j < n and toks[j][2] in HONORIFICS and toks[j][0] - toks[j - 1][1] <= 2:
                j += 1
            if j < n and toks[j][0] - toks[j - 1][1] <= 2 and text[toks[j - 1][1]] in " .":
                stop = run(j, 3)
                if stop > j and not _org_follows(toks, stop):
                    yield "PERSON", toks[j][0], toks[stop - 1][1], _key(text, toks, j, stop)
                    i = stop
                    continue
            i = j
            continue
        if (
            _name_shaped(word)
            and (word in given or word in known)
            and word not in _STOP
            and word not in _NOT_NAME
        ):
            stop = named(i, 3)
            if stop > i and not _org_follows(toks, stop):
                follows = stop > i + 1 and (
                    toks[i + 1][2] in family or toks[i + 1][2] in given or toks[i + 1][2] in known
                )
                plain = word not in _AMBIGUOUS and len(word) > 2  # "Mi goreng", "Li"
                role = i > 0 and toks[i - 1][2] in _ROLE and toks[i - 1][1] + 1 == start
                if plain or word in known or follows or role:
                    yield "PERSON", start, toks[stop - 1][1], _key(text, toks, i, stop)
                    i = stop
                    continue
        i += 1


def _tokens(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) of every ``_TOKEN`` match in ``text``, in order: the same as from
    ``finditer``, at less cost. A match starts at the first letter after the one before it
    (no letter between them, or the match would start there), and a word starts with a
    letter, so ``str.find`` from the previous end finds each word where the pattern did."""
    out = []
    pos = 0
    find = text.find
    for word in _TOKEN.findall(text):
        start = find(word, pos)
        pos = start + len(word)
        out.append((start, pos, word))
    return out


def _org_follows(toks: list[tuple[int, int, str]], stop: int) -> bool:
    return (
        stop < len(toks) and toks[stop][2] in _ORG_AFTER and toks[stop][0] - toks[stop - 1][1] == 1
    )


def _dictionary_hit(
    text: str,
    toks: list[tuple[int, int, str]],
    i: int,
    entries: Iterable[tuple[str, ...]],
) -> int:
    """Index after the longest dictionary name starting at token i, or 0."""
    for words in entries:
        stop = i + len(words)
        if stop > len(toks):
            continue
        if len(words) == 1 and not _name_shaped(toks[i][2]):
            continue  # a one-word name matches only capitalised ("Jaya", not "jaya")
        if all(toks[i + k][2].casefold() == w for k, w in enumerate(words)) and all(
            text[toks[k][1] : toks[k + 1][0]].isspace() for k in range(i, stop - 1)
        ):
            return stop
    return 0


def _key(text: str, toks: list[tuple[int, int, str]], i: int, stop: int) -> str:
    # the gaps inside a found name are whitespace: the same as joining its tokens
    return " ".join(text[toks[i][0] : toks[stop - 1][1]].casefold().split())
