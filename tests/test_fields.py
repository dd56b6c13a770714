"""Field encryption (AES-256-GCM with associated data), blind indexes and the master key."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from sqlalchemy import text

from bizosctl.config import Settings
from bizosctl.errors import ConfigError, DecryptionFailed, KeyringError
from bizosctl.security.fields import blind_index, decrypt, encrypt, key_version
from bizosctl.security.keyring import Keyring
from bizosctl.security.masterkey import create_key_file, encode, load_master_key

T1, T2 = uuid.uuid4(), uuid.uuid4()
ROW = uuid.uuid4()


def test_roundtrip_and_version_in_value(ctl):
    token = encrypt(
        ctl.keyring, "ayu@example.com", tenant_id=T1, table="members", column="email", row=ROW
    )
    assert token.startswith("bz1.1.") and "ayu" not in token
    assert key_version(token) == 1
    assert (
        decrypt(ctl.keyring, token, tenant_id=T1, table="members", column="email", row=ROW)
        == "ayu@example.com"
    )


@pytest.mark.parametrize(
    ("tenant", "table", "column"),
    [(T2, "members", "email"), (T1, "customers", "email"), (T1, "members", "name")],
)
def test_value_bound_to_tenant_table_column(ctl, tenant, table, column):
    token = encrypt(ctl.keyring, "secret", tenant_id=T1, table="members", column="email", row=ROW)
    with pytest.raises(DecryptionFailed, match="does not decrypt"):
        decrypt(ctl.keyring, token, tenant_id=tenant, table=table, column=column, row=ROW)


def test_tampered_ciphertext_is_rejected(ctl):
    token = encrypt(ctl.keyring, "secret", tenant_id=T1, table="members", column="email", row=ROW)
    raw = bytearray(base64.urlsafe_b64decode(token.split(".", 2)[2]))
    raw[14] ^= 0x01  # one bit of the ciphertext
    tampered = "bz1.1." + base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(DecryptionFailed):
        decrypt(ctl.keyring, tampered, tenant_id=T1, table="members", column="email", row=ROW)


@pytest.mark.parametrize("token", ["plain text", "bz2.1.abcd", "bz1.x.abcd"])
def test_not_an_encrypted_value(ctl, token):
    with pytest.raises(DecryptionFailed, match="not an encrypted value"):
        decrypt(ctl.keyring, token, tenant_id=T1, table="members", column="email", row=ROW)


def test_unknown_key_version(ctl):
    token = encrypt(ctl.keyring, "secret", tenant_id=T1, table="members", column="email", row=ROW)
    with pytest.raises(KeyringError, match="'pii' key version 9 is unknown or retired"):
        decrypt(
            ctl.keyring,
            token.replace("bz1.1.", "bz1.9.", 1),
            tenant_id=T1,
            table="members",
            column="email",
            row=ROW,
        )


def test_blind_index_is_keyed_and_deterministic(ctl):
    a = blind_index(ctl.keyring, "ayu@example.com")
    assert a == blind_index(ctl.keyring, "ayu@example.com")
    assert a != blind_index(ctl.keyring, "ayu@example.org")
    assert a.startswith("1:") and "ayu" not in a


def test_wrong_master_key_decrypts_nothing(ctl):
    wrong = Keyring(os.urandom(32))
    with (
        ctl.catalog() as s,
        pytest.raises(KeyringError, match="wrong BIZOS_MASTER_KEY, key file or KMS key"),
    ):
        wrong.load(s)


def test_members_pii_is_stored_encrypted(ctl, make_tenant):
    from bizosctl.tenancy.router import tenant_session
    from bizosctl.tenancy.sample import load_sample_data

    slug = make_tenant(tier="shared")
    load_sample_data(ctl, slug)
    tid = ctl.route(slug).tenant_id
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        rows = s.execute(text("select id, email_enc, name_enc, email_bidx from members")).all()
        audit = (
            s.execute(text("select new::text from audit_logs where table_name = 'members'"))
            .scalars()
            .all()
        )
    assert all("example" not in r.email_enc for r in rows)
    assert all("@" not in a for a in audit)
    emails = {
        decrypt(ctl.keyring, r.email_enc, tenant_id=tid, table="members", column="email", row=r.id)
        for r in rows
    }
    assert f"ayu@{slug}.example" in emails
    assert blind_index(ctl.keyring, f"ayu@{slug}.example") in {r.email_bidx for r in rows}


def test_key_file_created_0600_and_wrong_mode_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZOS_HOME", str(tmp_path))
    key = tmp_path / "master.key"
    assert create_key_file(key) is True
    assert create_key_file(key) is False
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert len(load_master_key(Settings())) == 32
    key.chmod(0o644)
    with pytest.raises(KeyringError, match="has mode 0644; run chmod 600"):
        load_master_key(Settings())


def test_missing_master_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZOS_HOME", str(tmp_path))
    with pytest.raises(KeyringError, match="no master key"):
        load_master_key(Settings())


@pytest.mark.parametrize(
    ("value", "message"),
    [("not base64!!", "is not base64"), (encode(b"short"), "must decode to 32 bytes, not 5")],
)
def test_bad_master_key_env(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("BIZOS_HOME", str(tmp_path))
    monkeypatch.setenv("BIZOS_MASTER_KEY", value)
    with pytest.raises(ConfigError, match=message):
        load_master_key(Settings())
