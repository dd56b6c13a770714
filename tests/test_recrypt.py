"""The rotation's bulk re-encryption: same results as the one-value functions, rows in and COPY
text out, the worker-process path, the optimistic write that never overwrites the application,
and the counts by version."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid

import pytest
from sqlalchemy import text

from bizosctl.errors import DecryptionFailed, KeyringError
from bizosctl.security.fields import (
    Recrypter,
    blind_index,
    decrypt,
    encrypt,
    key_version,
    normalize_email,
)
from bizosctl.security.keyring import DataKey
from bizosctl.security.recrypt import recrypt_rows
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data

T1, T2 = "7d7c2f2e-1111-4c1a-9e0e-000000000001", "7d7c2f2e-2222-4c1a-9e0e-000000000002"
R1, R2 = "0b0e7a8e-0000-4000-8000-00000000000a", "0b0e7a8e-0000-4000-8000-00000000000b"
KEYS = {1: os.urandom(32), 2: os.urandom(32)}
COLS = (("email_enc", True), ("name_enc", False), ("phone_enc", False))


class Ring:
    """The two versions of ``KEYS`` as a keyring (``primary`` is the one given)."""

    def __init__(self, primary: int, binds: tuple[int, ...] = ()) -> None:
        self.keys = {v: DataKey("pii", v, k, v == primary, v in binds) for v, k in KEYS.items()}
        self.top = primary

    def primary(self, purpose: str) -> DataKey:
        return self.keys[self.top]

    def get(self, purpose: str, version: int) -> DataKey:
        if version not in self.keys:
            raise KeyringError(f"'pii' key version {version} is unknown or retired")
        return self.keys[version]

    def versions(self, purpose: str) -> list[DataKey]:
        return list(self.keys.values())


def enc(value: str, tenant: str = T1, column: str = "email", version: int = 1) -> str:
    return encrypt(Ring(version), value, tenant_id=tenant, table="members", column=column)


def test_recrypt_matches_encrypt_decrypt_and_blind_index():
    rc = Recrypter(KEYS, 2)
    new = Ring(2)
    items = [(enc(f"m{i}@x.example", T1 if i % 2 else T2), i) for i in range(50)]
    out = rc.recrypt([(t, rc.aad(T1 if i % 2 else T2, "members", "email"), b"") for t, i in items])
    for (old, i), (token, clear) in zip(items, out, strict=True):
        tenant = T1 if i % 2 else T2
        assert token.startswith("bz1.2.") and token != old
        assert clear == f"m{i}@x.example".encode()
        assert decrypt(new, token, tenant_id=tenant, table="members", column="email") == (
            f"m{i}@x.example"
        )
        assert rc.index(normalize_email(clear.decode())) == blind_index(new, clear.decode())
    assert len({t for t, _ in out}) == len(out)  # a fresh nonce for every value


def test_recrypt_keeps_the_associated_data_binding():
    rc = Recrypter(KEYS, 2)
    token, _ = rc.recrypt([(enc("a@x.example"), rc.aad(T1, "members", "email"), b"")])[0]
    with pytest.raises(DecryptionFailed):
        decrypt(Ring(2), token, tenant_id=T2, table="members", column="email")


def tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token.split(".", 2)[2]))
    raw[14] ^= 0x01
    return "bz1.1." + base64.urlsafe_b64encode(bytes(raw)).decode()


BAD = {
    "tampered": lambda: (tampered(enc("a@x.example")), T1),
    "other tenant": lambda: (enc("a@x.example"), T2),
    "plain text": lambda: ("plain text", T1),
    "other format": lambda: ("bz2.1.abcd", T1),
    "version not a number": lambda: ("bz1.x.abcd", T1),
    "not base64": lambda: ("bz1.1.@@@@", T1),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_recrypt_refuses_what_does_not_decrypt(kind):
    token, aad_tenant = BAD[kind]()
    rc = Recrypter(KEYS, 2)
    good = enc("ok@x.example")
    with pytest.raises(DecryptionFailed, match="does not decrypt"):
        rc.recrypt(
            [
                (good, rc.aad(T1, "members", "email"), b""),
                (token, rc.aad(aad_tenant, "members", "email"), b""),
            ]
        )


def test_recrypt_unknown_or_retired_version():
    rc = Recrypter({2: KEYS[2]}, 2)  # version 1 retired
    with pytest.raises(KeyringError, match="'pii' key version 1 is unknown or retired"):
        rc.recrypt([(enc("a@x.example"), rc.aad(T1, "members", "email"), b"")])


def test_recrypt_rows_rewrites_old_values_and_leaves_the_rest():
    keys = tuple(KEYS.items())
    already = enc("new@x.example", version=2)
    rows = [
        ("(0,1)", "101", T1, R1, enc("a@x.example"), enc("A", column="name"), None),
        ("(0,2)", "102", T1, R2, already, enc("B", column="name"), enc("+62", column="phone")),
        ("(3,7)", "103", T2, R1, already, enc("C", column="name", version=2), None),
    ]
    n, out = recrypt_rows(keys, 2, "members", COLS, rows)
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert n == 2 and len(lines) == 2  # the third row has nothing under version 1
    new = Ring(2)
    (ct, xmin, email, name, phone, bidx), second = lines
    assert (ct, xmin, phone) == ("(0,1)", "101", "\\N")  # NULL stays NULL ("leave as is")
    assert decrypt(new, email, tenant_id=T1, table="members", column="email") == "a@x.example"
    assert decrypt(new, name, tenant_id=T1, table="members", column="name") == "A"
    assert bidx == blind_index(new, "a@x.example")
    assert second[:3] == ["(0,2)", "102", "\\N"] and second[5] == "\\N"  # e-mail already new
    assert key_version(second[3]) == 2 and key_version(second[4]) == 2
    assert recrypt_rows(keys, 2, "members", COLS, []) == (0, b"")


def test_recrypt_to_a_binding_version_binds_each_value_to_its_row():
    """v1 (made before row binding) to v2 (binds rows): the v2 value decrypts on its row only."""
    rc = Recrypter(KEYS, 2, binds={2})
    new = Ring(2, binds=(2,))
    aad = rc.aad(T1, "members", "email")
    (a, _), (b, _) = rc.recrypt(
        [(enc("a@x.example"), aad, rc.row_suffix(R1)), (enc("b@x.example"), aad, rc.row_suffix(R2))]
    )
    assert decrypt(new, a, tenant_id=T1, table="members", column="email", row=R1) == "a@x.example"
    with pytest.raises(DecryptionFailed, match="does not decrypt"):
        decrypt(new, a, tenant_id=T1, table="members", column="email", row=R2)
    with pytest.raises(DecryptionFailed, match="binds values to their row"):
        decrypt(new, a, tenant_id=T1, table="members", column="email")
    # and a later rotation between binding versions keeps the binding
    back = Recrypter(KEYS, 1, binds={1, 2})
    (again, clear), = back.recrypt([(b, aad, back.row_suffix(R2))])  # fmt: skip
    assert clear == b"b@x.example"
    both = Ring(1, binds=(1, 2))
    assert decrypt(both, again, tenant_id=T1, table="members", column="email", row=R2) == (
        "b@x.example"
    )
    with pytest.raises(DecryptionFailed):
        back.recrypt([(b, aad, back.row_suffix(R1))])  # b copied onto row R1


def test_recrypt_rows_binds_the_row_id():
    keys = tuple(KEYS.items())
    rows = [("(0,1)", "101", T1, R1, enc("a@x.example"), enc("A", column="name"), None)]
    _, out = recrypt_rows(keys, 2, "members", COLS, rows, binds=(2,))
    [line] = out.decode().splitlines()
    _ct, _x, email, name, _phone, _bidx = line.split("\t")
    new = Ring(2, binds=(2,))
    assert decrypt(new, email, tenant_id=T1, table="members", column="email", row=R1) == (
        "a@x.example"
    )
    with pytest.raises(DecryptionFailed):
        decrypt(new, name, tenant_id=T1, table="members", column="name", row=R2)


# -- against PostgreSQL -------------------------------------------------------------------------
@pytest.fixture
def home(initialised_home):
    """An initialised home of this test's own (a copy of the worker's template)."""
    from bizosctl.catalog.control import get_control

    return get_control()


def member_values(ctl, slug):
    tid = ctl.route(slug).tenant_id
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        rows = s.execute(text("select id, email_enc, name_enc, email_bidx from members")).all()
    ring = ctl.keyring
    return {
        r.id: (
            decrypt(ring, r.email_enc, tenant_id=tid, table="members", column="email", row=r.id),
            decrypt(ring, r.name_enc, tenant_id=tid, table="members", column="name", row=r.id),
            key_version(r.email_enc),
            r.email_bidx.split(":")[0],
        )
        for r in rows
    }


def test_rotation_in_worker_processes(home, monkeypatch):
    """The process-pool path (used for large tables) on a small one, every tier."""
    from bizosctl.security import rotation
    from bizosctl.tenancy.provision import create_tenant

    monkeypatch.setattr(rotation, "PROCESS_PAGES", 0)
    for slug, tier in (("w-shared", "shared"), ("w-iso", "isolated")):
        create_tenant(home, slug=slug, name=slug, tier=tier, region="global")
        load_sample_data(home, slug)
    before = {slug: member_values(home, slug) for slug in ("w-shared", "w-iso")}
    report = rotation.rotate_pii(home, batch=2, workers=1)
    assert report["retired"] == [1] and report["left"] == {}
    home.reload_keyring()
    for slug, values in before.items():
        after = member_values(home, slug)
        assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in values.items()}
        assert {v[2:] for v in after.values()} == {(2, "2")}


def test_rotation_of_targets_in_parallel_checkpoints_each_target(home, cli):
    """``parallel``: targets re-encrypted at once (one per server), each its own step."""
    import json

    from bizosctl.security import rotation
    from bizosctl.sync.targets import list_targets
    from bizosctl.tenancy.provision import create_tenant

    slugs = ("par-shared", "par-iso", "par-schema")
    for slug, tier in zip(slugs, ("shared", "isolated", "schema"), strict=True):
        create_tenant(home, slug=slug, name=slug, tier=tier, region="global")
        load_sample_data(home, slug)
    before = {slug: member_values(home, slug) for slug in slugs}
    report = rotation.rotate_pii(home, batch=2, workers=0, parallel=3)
    assert (report["ok"], report["retired"], report["left"], report["skipped"]) == (
        True,
        [1],
        {},
        [],
    )
    r = cli("ops", "show", report["operation"], "--json")
    assert r.exit_code == 0, r.stderr
    op = json.loads(r.stdout)["operation"]
    assert op["params"]["parallel"] == 3
    names = [st["name"] for st in op["steps"] if st["name"].startswith("target:")]
    targets = {f"target:{t.server}/{t.database}/{t.schema}" for t in list_targets(home)}
    assert sorted(names) == sorted(targets)
    home.reload_keyring()
    for slug, values in before.items():
        after = member_values(home, slug)
        assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in values.items()}
        assert {v[2:] for v in after.values()} == {(2, "2")}


def test_a_row_the_application_changes_mid_batch_is_never_overwritten(home, monkeypatch):
    """Between the read of a batch and its write, the application updates one of its rows:
    the rotation's write must skip that row (its version changed), and the sweep then
    re-encrypts the application's value, not the one read before."""
    from bizosctl.security import recrypt, rotation
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="race-co", name="R", tier="schema", region="global")
    load_sample_data(home, "race-co")
    tid = home.route("race-co").tenant_id
    victim = next(iter(member_values(home, "race-co")))
    original = recrypt.recrypt_rows
    done = threading.Event()

    def app_writes_then_recrypt(*args, **kw):
        if not done.is_set():
            done.set()
            with tenant_session(home, "race-co", actor="app") as s:
                s.execute(
                    text("update members set name_enc = :n where id = :i"),
                    {
                        "n": encrypt(
                            home.keyring,
                            "Changed",
                            tenant_id=tid,
                            table="members",
                            column="name",
                            row=victim,
                        ),
                        "i": victim,
                    },
                )
        return original(*args, **kw)

    monkeypatch.setattr(recrypt, "recrypt_rows", app_writes_then_recrypt)
    report = rotation.rotate_pii(home, batch=1000, workers=0)
    assert done.is_set() and report["retired"] == [1]
    home.reload_keyring()
    after = member_values(home, "race-co")
    assert after[victim][1] == "Changed"
    assert {v[2] for v in after.values()} == {2}


def test_rotation_in_processes_with_concurrent_writes_loses_nothing(home, monkeypatch):
    from bizosctl.security import rotation
    from bizosctl.tenancy.provision import create_tenant

    monkeypatch.setattr(rotation, "PROCESS_PAGES", 0)
    create_tenant(home, slug="busy-p", name="B", tier="shared", region="global")
    load_sample_data(home, "busy-p")
    tid = home.route("busy-p").tenant_id
    stop = threading.Event()
    renamed: dict[uuid.UUID, str] = {}
    errors: list[BaseException] = []
    ids = list(member_values(home, "busy-p"))

    def app():
        n = 0
        try:
            while not stop.is_set():
                n += 1
                mid = ids[n % len(ids)]
                name = f"Name {n}"
                with tenant_session(home, "busy-p", actor="app") as s:
                    s.execute(
                        text("update members set name_enc = :n where id = :i"),
                        {
                            "n": encrypt(
                                home.keyring,
                                name,
                                tenant_id=tid,
                                table="members",
                                column="name",
                                row=mid,
                            ),
                            "i": mid,
                        },
                    )
                renamed[mid] = name
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=app)
    thread.start()
    try:
        time.sleep(0.2)
        report = rotation.rotate_pii(home, batch=2, workers=1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors and report["retired"] == [1] and len(renamed) == len(ids)
    home.reload_keyring()
    after = member_values(home, "busy-p")
    assert {mid: v[1] for mid, v in after.items() if mid in renamed} == renamed
    assert {v[2] for v in after.values()} == {2}


def test_count_by_version_tells_versions_apart(home):
    """Every encrypted column is counted, NULLs are not, and version 1 is not a prefix of 12."""
    from bizosctl.security.rotation import _engine, count_by_version
    from bizosctl.sync.targets import list_targets
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="count-co", name="C", tier="schema", region="global")
    load_sample_data(home, "count-co")  # 5 members (3 with a phone), 3 customers: 16 values
    target = next(t for t in list_targets(home) if t.schema == "t_count_co")
    engine = _engine(home, target)
    with engine.begin() as conn:
        conn.execute(text("SET session_replication_role = replica"))  # no audit, no guard
        conn.execute(
            text(
                "UPDATE t_count_co.members SET name_enc = 'bz1.12.' || md5(id::text) "
                "WHERE id = (SELECT id FROM t_count_co.members ORDER BY id LIMIT 1)"
            )
        )
        conn.execute(text("UPDATE t_count_co.customers SET email_enc = 'bz1.2.AAAA'"))
    with engine.connect() as conn:
        everything = count_by_version(conn, schema="t_count_co")
        others = count_by_version(conn, schema="t_count_co", other_than=1)
    assert everything == {1: 12, 12: 1, 2: 3}
    assert others == {12: 1, 2: 3}
