"""Keyring rotation online: PII re-encryption, JWT, DB passwords, master key, KMS, the checklist."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine
from bizosctl.errors import KeyringError
from bizosctl.security.fields import blind_index, decrypt, encrypt, key_version, normalize_email
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


def members(ctl, slug):
    """(email_enc, name_enc, email_bidx) of the tenant's members, through the app role."""
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        return s.execute(
            text("select id, email_enc, name_enc, email_bidx from members order by id")
        ).all()


def emails(ctl, slug):
    tid = ctl.route(slug).tenant_id
    return sorted(
        decrypt(ctl.keyring, r.email_enc, tenant_id=tid, table="members", column="email", row=r.id)
        for r in members(ctl, slug)
    )


@pytest.fixture
def home(initialised_home):
    """An initialised home of this test's own (a copy of the worker's template)."""
    from bizosctl.catalog.control import get_control

    return get_control()


def test_list_shows_versions_and_usage_never_key_material(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="lister", name="L", tier="schema", region="global")
    load_sample_data(home, "lister")
    r = cli("secrets", "list", "--json")
    assert r.exit_code == 0, r.stderr
    doc = {p["purpose"]: p["versions"] for p in json.loads(r.stdout)["purposes"]}
    assert set(doc) == {"pii", "jwt", "webhook", "db-credentials", "gdpr"}
    assert doc["pii"][0]["values"] == 13 and doc["pii"][0]["primary"] is True
    assert doc["jwt"][0]["values"] is None
    for purpose in doc:
        for v in home.keyring.versions(purpose):
            for form in (
                v.key.hex(),
                base64.b64encode(v.key).decode(),
                base64.urlsafe_b64encode(v.key).decode(),
            ):
                assert form not in r.stdout


def test_rotate_pii_reencrypts_every_tier_and_retires_the_old_key(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    for slug, tier in (("p-shared", "shared"), ("p-schema", "schema"), ("p-iso", "isolated")):
        create_tenant(home, slug=slug, name=slug, tier=tier, region="global")
        load_sample_data(home, slug)
    before = {slug: emails(home, slug) for slug in ("p-shared", "p-schema", "p-iso")}
    r = cli("secrets", "rotate", "pii", "--batch", "2", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == 2 and doc["retired"] == [1] and doc["left"] == {}
    for slug, expected in before.items():
        rows = members(home, slug)
        assert {key_version(r.email_enc) for r in rows} == {2}
        assert {r.email_bidx.split(":")[0] for r in rows} == {"2"}
        assert emails(home, slug) == expected
        assert blind_index(home.keyring, normalize_email(f"ayu@{slug}.example")) in {
            r.email_bidx for r in rows
        }
    # version 1 is retired: a value under it no longer decrypts
    with pytest.raises(KeyringError, match="'pii' key version 1 is unknown or retired"):
        decrypt(home.keyring, "bz1.1.AAAA", tenant_id=uuid.uuid4(), table="members", column="email")
    listed = {
        p["purpose"]: p["versions"]
        for p in json.loads(cli("secrets", "list", "--json").stdout)["purposes"]
    }
    assert [(v["version"], v["values"], v["state"]) for v in listed["pii"]] == [
        (1, 0, "retired"),
        (2, 39, "primary"),
        (3, 0, "staged"),  # the next rotation's key, already readable everywhere
    ]
    assert doc["staged"] == 3 and doc["waited_s"] == 0  # init staged v2 long enough ago


def test_rotate_pii_with_concurrent_application_writes(home):
    """The application keeps writing (under whatever key it has); nothing is lost or left old."""
    from bizosctl.security.rotation import rotate_pii
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="busy-co", name="B", tier="shared", region="global")
    load_sample_data(home, "busy-co")
    tid = home.route("busy-co").tenant_id
    written: dict[str, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        n = 0
        try:
            while not stop.is_set():
                n += 1
                email = f"new{n}@busy.example"
                mid = uuid.uuid4()  # the row's id is part of its values' associated data
                ring = home.keyring
                with tenant_session(home, "busy-co", actor="app") as s:
                    s.execute(
                        text(
                            "insert into members (tenant_id, id, email_enc, email_bidx, name_enc) "
                            "values (:t, :i, :e, :b, :n)"
                        ),
                        {
                            "t": tid,
                            "i": mid,
                            "e": encrypt(
                                ring, email, tenant_id=tid, table="members", column="email", row=mid
                            ),
                            "b": blind_index(ring, email),
                            "n": encrypt(
                                ring,
                                f"N{n}",
                                tenant_id=tid,
                                table="members",
                                column="name",
                                row=mid,
                            ),
                        },
                    )
                written[email] = f"N{n}"
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        report = rotate_pii(home, batch=3)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert report["retired"] == [1]
    rows = members(home, "busy-co")
    assert {key_version(r.email_enc) for r in rows} == {2}
    found = set(emails(home, "busy-co"))
    assert set(written) <= found and len(written) > 5


def test_rotation_killed_halfway_then_resumed_values_readable_throughout(home, run_bizosctl):
    from bizosctl.tenancy.provision import create_tenant

    for slug in ("k-one", "k-two"):
        create_tenant(home, slug=slug, name=slug, tier="schema", region="global")
        load_sample_data(home, slug)
    first = run_bizosctl(
        "secrets", "rotate", "pii", "--json", env={"BIZOS_CRASH_AT": "rotate.target.2"}
    )
    assert first.returncode == -9
    home.reload_keyring()
    versions = {
        key_version(r.email_enc) for slug in ("k-one", "k-two") for r in members(home, slug)
    }
    assert versions == {1, 2}  # half done, and every value still decrypts:
    assert all(len(emails(home, slug)) == 5 for slug in ("k-one", "k-two"))
    second = run_bizosctl("secrets", "rotate", "pii", "--json")
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["resumed"] is True and doc["version"] == 2 and doc["retired"] == [1]
    home.reload_keyring()
    assert {
        key_version(r.email_enc) for slug in ("k-one", "k-two") for r in members(home, slug)
    } == {2}


def test_jwt_rotation_keeps_old_tokens_until_retired(home, cli):
    from bizosctl.security.jwt import InvalidToken, issue_token, verify_token
    from bizosctl.security.secrets import retire_due

    old = issue_token(home, subject="u1", tenant="acme")
    r = cli("secrets", "rotate", "jwt", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kid"] == "jwt-v2"
    home.reload_keyring()
    new = issue_token(home, subject="u2", tenant="acme")
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == "jwt-v2"
    assert verify_token(home, old)["sub"] == "u1"
    assert verify_token(home, new)["sub"] == "u2"
    with home.catalog() as s:  # the last token signed by v1 has expired
        s.execute(
            text(
                "update keyring set retire_after = now() - interval '1 second' "
                "where purpose = 'jwt' and version = 1"
            )
        )
    assert ("jwt", 1) in retire_due(home)
    with pytest.raises(InvalidToken, match="retired or unknown"):
        verify_token(home, old)
    assert verify_token(home, new)["sub"] == "u2"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not.a.token", "invalid token"),
        # {"alg": "EdDSA", "kid": "jwt-v9"}: a key version that does not exist
        ("eyJhbGciOiJFZERTQSIsImtpZCI6Imp3dC12OSJ9.eyJzdWIiOiJ4In0.c2ln", "retired or unknown"),
        # {"alg": "HS256", "kid": "jwt-v9"}: refused before any key is looked up
        ("eyJhbGciOiJIUzI1NiIsImtpZCI6Imp3dC12OSJ9.eyJzdWIiOiJ4In0.c2ln", "not signed with EdDSA"),
    ],
)
def test_bad_tokens(home, token, message):
    from bizosctl.security.jwt import InvalidToken, verify_token

    with pytest.raises(InvalidToken, match=message):
        verify_token(home, token)


def test_expired_and_tampered_tokens(home):
    from bizosctl.security.jwt import InvalidToken, issue_token, verify_token

    token = issue_token(home, subject="u", tenant="t", ttl_seconds=1)
    head, body, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["sub"] = "admin"
    tampered = ".".join(
        [head, base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("="), sig]
    )
    with pytest.raises(InvalidToken, match="invalid token"):
        verify_token(home, tampered)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            verify_token(home, token)
        except InvalidToken as exc:
            assert "expired" in exc.message
            break
        time.sleep(0.1)
    else:
        pytest.fail("the token did not expire")


def test_db_password_rotation_under_load_has_no_failed_query(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="iso-load", name="I", tier="isolated", region="global")
    load_sample_data(home, "iso-load")
    old = home.route("iso-load")
    failures: list[BaseException] = []
    done = [0]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                with tenant_session(home, "iso-load", actor="load", read_only=True) as s:
                    s.execute(text("select count(*) from tasks")).scalar_one()
                done[0] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        r = cli(
            "secrets", "rotate", "db-password", "--tenant", "iso-load", "--grace", "500ms", "--json"
        )
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert r.exit_code == 0, r.stderr
    assert not failures, failures[:3]
    assert done[0] > 20
    new = home.route("iso-load")
    assert new.role == old.role + "__b" and new.password != old.password
    handle = home.server(new.server)
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError):
        get_engine(handle.login_url(old.database, old.role, old.password), pooled=False).connect()
    with get_engine(
        handle.login_url(new.database, new.role, new.password), pooled=False
    ).connect() as c:
        assert c.execute(text("select current_user")).scalar_one() == new.role
    # and back again: the roles alternate
    assert (
        cli("secrets", "rotate", "db-password", "--tenant", "iso-load", "--grace", "0s").exit_code
        == 0
    )
    assert home.route("iso-load").role == old.role


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass one of --tenant SLUG, --shared REGION, --server NAME or --all"),
        (("--tenant", "x1y", "--all"), "pass one of --tenant SLUG"),
        (("--tenant", "nobody-here"), "no isolated tenant named 'nobody-here'"),
        (("--all", "--grace", "soon"), "invalid --grace 'soon'"),
    ],
)
def test_db_password_bad_input(home, cli, args, message):
    r = cli("secrets", "rotate", "db-password", *args)
    assert r.exit_code in (2, 3)
    assert message in r.stderr


def test_master_key_rotation_rewraps_everything(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="mk-co", name="M", tier="isolated", region="global")
    load_sample_data(home, "mk-co")
    before = emails(home, "mk-co")
    old_key = (home.settings.key_file).read_text()
    r = cli("secrets", "rotate", "master-key", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["data_keys"] == 7 and plan["to"] == "a new key file"
    r = cli("secrets", "rotate", "master-key")
    assert r.exit_code == 2 and "replacing the master key is destructive: pass --yes" in r.stderr
    assert home.settings.key_file.read_text() == old_key
    r = cli("secrets", "rotate", "master-key", "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rewrapped"] == 7  # 5 purposes, staged pii and jwt keys too
    assert home.settings.key_file.read_text() != old_key
    assert oct(home.settings.key_file.stat().st_mode & 0o777) == "0o600"
    assert old_key.strip() not in r.stdout + r.stderr
    from bizosctl.catalog.control import get_control, reset_controls

    reset_controls()
    ctl = get_control()
    assert emails(ctl, "mk-co") == before
    # the old master key opens nothing any more
    r = cli("tenant", "query", "mk-co", "select 1", env={"BIZOS_MASTER_KEY": old_key.strip()})
    assert r.exit_code == 1 and "wrong BIZOS_MASTER_KEY, key file or KMS key" in r.stderr


def test_master_key_rotation_killed_after_commit_finishes_on_next_use(home, run_bizosctl):
    first = run_bizosctl(
        "secrets",
        "rotate",
        "master-key",
        "--yes",
        env={"BIZOS_CRASH_AT": "rotate.master.rewrapped"},
    )
    assert first.returncode == -9
    nxt = home.settings.key_file.with_name("master.key.next")
    assert nxt.exists()
    r = run_bizosctl("secrets", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert not nxt.exists()


def test_master_key_from_env_cannot_rotate_to_a_file(home, cli):
    key = home.settings.key_file.read_text().strip()
    r = cli("secrets", "rotate", "master-key", env={"BIZOS_MASTER_KEY": key})
    assert r.exit_code == 2
    assert "the master key comes from BIZOS_MASTER_KEY" in r.stderr


@pytest.fixture
def kms(monkeypatch):
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "ap-southeast-3",
    }.items():
        monkeypatch.setenv(k, v)
    import boto3

    url = f"http://127.0.0.1:{port}"
    client = boto3.client("kms", endpoint_url=url)
    yield url, client
    server.stop()


def test_rotate_to_kms_then_the_keyring_opens_through_kms(home, cli, kms):
    url, client = kms
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="kms-co", name="K", tier="schema", region="global")
    load_sample_data(home, "kms-co")
    before = emails(home, "kms-co")
    env = {"BIZOS_KMS_ENDPOINT_URL": url}
    # the dry run checks the KMS key and names it, and changes nothing
    r = cli("secrets", "rotate", "master-key", "--to-kms", key_id, "--dry-run", env=env)
    assert r.exit_code == 0, r.stderr
    assert "would re-wrap 7 data key(s)" in r.stdout and f"kms:{key_id}" in r.stdout
    assert "the KMS key answered" in r.stdout
    r = cli("secrets", "rotate", "master-key", "--to-kms", "no-such-key", "--dry-run", env=env)
    assert r.exit_code == 1 and "KMS key no-such-key" in r.stderr
    r = cli("secrets", "rotate", "master-key", "--to-kms", key_id, env=env)
    assert r.exit_code == 2 and "pass --yes to confirm" in r.stderr
    assert home.settings.key_file.exists()
    r = cli(
        "secrets",
        "rotate",
        "master-key",
        "--to-kms",
        key_id,
        "--yes",
        "--json",
        env={"BIZOS_KMS_ENDPOINT_URL": url},
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["master"] == f"kms:{key_id}"
    assert not home.settings.key_file.exists()  # no local master key left
    from bizosctl.catalog.control import get_control, reset_controls
    from bizosctl.config import reset_settings

    reset_settings()
    reset_controls()
    ctl = get_control()  # config.toml now names the KMS key
    assert ctl.settings.kms_key_id == key_id
    assert emails(ctl, "kms-co") == before
    other = client.create_key()["KeyMetadata"]["KeyId"]
    r = cli("secrets", "list", env={"BIZOS_KMS_KEY_ID": other})
    assert r.exit_code == 1 and f"not by the configured one (kms:{other})" in r.stderr


def test_secrets_check_flags_what_is_missing_and_prints_no_secret(home, cli):
    r = cli("secrets", "check", "--json")
    assert r.exit_code == 1
    failed = {c["name"] for c in json.loads(r.stdout)["checks"] if not c["ok"]}
    assert failed == {
        "stripe secret key",
        "stripe publishable key",
        "stripe webhook secret",
    }  # the rate limit has a default (100/10seconds)
    env = {
        "BIZOS_STRIPE_SECRET_KEY": "sk_live_verysecret123",
        "BIZOS_STRIPE_PUBLISHABLE_KEY": "pk_test_abc",
        "BIZOS_STRIPE_WEBHOOK_SECRET": "whsec_hushhush",
        "BIZOS_RATE_LIMIT": "100/minute",
        "BIZOS_ENV": "production",
    }
    r = cli("secrets", "check", "--json", env=env)
    assert r.exit_code == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert (
        not checks["stripe mode"]["ok"]
        and "secret key is live, publishable key is test" in checks["stripe mode"]["detail"]
    )
    assert not checks["TLS"]["ok"] and not checks["CORS"]["ok"]
    assert not checks["stripe live in production"]["ok"]
    for secret in ("verysecret123", "hushhush"):
        assert secret not in r.stdout + r.stderr
    good = env | {
        "BIZOS_STRIPE_PUBLISHABLE_KEY": "pk_live_abc",
        "BIZOS_PUBLIC_URL": "https://app.example",
        "BIZOS_CORS_ORIGINS": '["https://app.example"]',
    }
    r = cli("secrets", "check", "--json", env=good)
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["ok"] is True


def test_whole_rotation_run_prints_no_secret(home):
    """Run every rotation through the real CLI (child processes) and scan all output."""
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="scan-co", name="S", tier="isolated", region="global")
    load_sample_data(home, "scan-co")
    route = home.route("scan-co")
    secrets = [route.password, home.settings.key_file.read_text().strip(), "ayu@scan-co.example"]
    for purpose in ("pii", "jwt", "db-credentials"):
        for v in home.keyring.versions(purpose):
            secrets += [v.key.hex(), base64.b64encode(v.key).decode()]
    out = []
    for args in (
        ["secrets", "rotate", "pii"],
        ["secrets", "rotate", "jwt"],
        ["secrets", "rotate", "db-credentials"],
        ["secrets", "rotate", "db-password", "--all", "--grace", "0s"],
        ["secrets", "rotate", "master-key", "--yes"],
        ["secrets", "list"],
        ["secrets", "check"],
        ["--debug", "secrets", "list", "--json"],
    ):
        for json_flag in ([], ["--json"]) if "--json" not in args else ([],):
            r = subprocess.run(
                [sys.executable, "-m", "bizosctl", *args, *json_flag],
                capture_output=True,
                text=True,
                timeout=120,
            )
            out.append(r.stdout + r.stderr)
    home.reload_keyring()
    secrets.append(home.route("scan-co").password)
    log = (home.settings.regions_dir / "global" / "pgdata" / "log").read_text(errors="replace")
    blob = "\n".join(out) + log
    for secret in secrets:
        assert secret not in blob, "a secret value appeared in output or the server log"


def test_another_process_keeps_reading_during_a_rotation(home):
    """A process with its own keyring (reloaded every BIZOS_KEYRING_RELOAD_SECONDS) never meets
    a value under a version it does not know: the new key reads before it writes."""
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings
    from bizosctl.security.rotation import rotate_pii
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="reader-co", name="R", tier="schema", region="global")
    load_sample_data(home, "reader-co")
    other = Control(Settings())  # like another application process
    tid = other.route("reader-co").tenant_id
    _ = other.keyring
    failures: list[BaseException] = []
    reads = [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                for r in members(other, "reader-co"):
                    decrypt(
                        other.keyring,
                        r.email_enc,
                        tenant_id=tid,
                        table="members",
                        column="email",
                        row=r.id,
                    )
                reads[0] += 1
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rotate_pii(home, batch=1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert reads[0] > 10
    assert not failures, failures[:3]


# -- staged keys --------------------------------------------------------------------------------
def stale_process():
    """Another application process that loaded its keyring now and will not re-read it."""
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings

    other = Control(Settings(keyring_reload_seconds=3600))
    _ = other.keyring
    return other


def test_a_process_that_never_reloads_reads_values_under_the_new_key(home):
    """The rotation switches to the key staged before that process started: it decrypts every
    re-encrypted value and still finds members by their new blind index."""
    from bizosctl.security.fields import blind_indexes
    from bizosctl.security.rotation import rotate_pii
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="stale-co", name="S", tier="shared", region="global")
    load_sample_data(home, "stale-co")
    other = stale_process()
    report = rotate_pii(home, batch=2)
    assert report["version"] == 2 and report["waited_s"] == 0
    assert {key_version(r.email_enc) for r in members(home, "stale-co")} == {2}
    assert len(emails(other, "stale-co")) == 5  # its keyring still has v1 primary, v2 staged
    with tenant_session(other, "stale-co", actor="t", read_only=True) as s:
        found = s.execute(
            text("select count(*) from members where email_bidx = any(:b)"),
            {"b": blind_indexes(other.keyring, normalize_email("ayu@stale-co.example"))},
        ).scalar_one()
    assert found == 1


def test_jwt_signed_with_the_new_key_verifies_in_a_process_that_never_reloads(home, cli):
    from bizosctl.security.jwt import issue_token, verify_token

    other = stale_process()
    r = cli("secrets", "rotate", "jwt", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["kid"], doc["staged"]) == ("jwt-v2", 3)
    home.reload_keyring()
    assert verify_token(other, issue_token(home, subject="u", tenant="acme"))["sub"] == "u"


def test_fresh_key_skips_the_staged_key_and_waits_one_reload_period(home, cli):
    from bizosctl.tenancy.provision import create_tenant

    create_tenant(home, slug="fresh-co", name="F", tier="schema", region="global")
    load_sample_data(home, "fresh-co")
    dry = json.loads(cli("secrets", "rotate", "pii", "--fresh-key", "--dry-run", "--json").stdout)
    assert dry["next_version"] is None and dry["would_wait_s"] == 0.2
    r = cli("secrets", "rotate", "pii", "--fresh-key", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    # v2 (staged, possibly as exposed as v1) is skipped and retired at once
    assert (doc["version"], doc["retired"], doc["staged"]) == (3, [1], 4)
    assert 0.1 < doc["waited_s"] <= 0.2
    assert {key_version(r.email_enc) for r in members(home, "fresh-co")} == {3}
    r = cli("secrets", "rotate", "jwt", "--fresh-key", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kid"] == "jwt-v3" and json.loads(r.stdout)["waited_s"] > 0.1
    states = {
        p["purpose"]: [(v["version"], v["state"]) for v in p["versions"]]
        for p in json.loads(cli("secrets", "list", "--json").stdout)["purposes"]
    }
    assert states["pii"] == [(1, "retired"), (2, "retired"), (3, "primary"), (4, "staged")]
    # --fresh-key is for a leak: the keys that may have leaked (v1 signed, v2 was staged)
    # are retired at once, and a retired JWT key is destroyed
    assert states["jwt"] == [(1, "destroyed"), (2, "destroyed"), (3, "primary"), (4, "staged")]


def test_a_keyring_without_a_staged_key_makes_one_and_waits(home, cli):
    """An older deployment (no staged key) rotates as before: a new key that reads for one
    reload period before it writes, and the next one staged at the end."""
    with home.catalog() as s:
        s.execute(text("delete from keyring where purpose = 'pii' and version = 2"))
    dry = json.loads(cli("secrets", "rotate", "pii", "--dry-run", "--json").stdout)
    assert dry["next_version"] is None
    r = cli("secrets", "rotate", "pii", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["version"], doc["staged"]) == (2, 3) and doc["waited_s"] > 0.1
    dry = json.loads(cli("secrets", "rotate", "pii", "--dry-run", "--json").stdout)
    assert dry["next_version"] == 3


def test_rotate_dry_run_says_which_key_and_changes_nothing(home, cli):
    def keyring():
        with home.catalog() as s:
            return s.execute(
                text("select purpose, version, is_primary, retired_at from keyring order by 1, 2")
            ).all()

    before = keyring()
    r = cli("secrets", "rotate", "pii", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "would switch to v2 (staged) after 0" in r.stdout
    r = cli("secrets", "rotate", "jwt", "--fresh-key", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "would sign with a new key after 0.2s" in r.stdout
    assert keyring() == before
