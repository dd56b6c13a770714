"""E-mail against a loopback SMTP server (aiosmtpd): the digest e-mailed by a real worker with
a plain and an HTML (autoescaped) part and the tenant's sender; SMTP down (the digest is
stored, the e-mail retried by the job system, every attempt recorded); a refusal for good;
the sealed SMTP password (login, never printed, resealed by the credentials rotation); the
sender settings' bad input."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import socket
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import unique_slug
from sqlalchemy import insert, text
from test_digest import DAY, count, seed
from test_jobs import wait_for, worker
from typer.testing import CliRunner

from bizosctl.catalog.control import Control
from bizosctl.cli.main import app
from bizosctl.config import Settings, reset_settings
from bizosctl.tenancy.router import tenant_session


class Inbox:
    """What the loopback server received; ``refuse``: answer RCPT with that line."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.refuse: str | None = None
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted"

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (b"mailer", b"s3cret-pw")
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_smtp(inbox: Inbox, port: int, **kw: Any) -> Controller:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AUTH without TLS: loopback only
        c = Controller(inbox, hostname="127.0.0.1", port=port, **kw)
        c.start()
    return c


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    c = start_smtp(inbox, port)
    yield inbox, port
    c.stop()


@pytest.fixture
def jobs(ctl: Control) -> Iterator[dict[str, Any]]:
    import test_jobs

    yield from test_jobs.jobs.__wrapped__(ctl)  # type: ignore[attr-defined]


def smtp_env(port: int, queue: str, **more: str) -> dict[str, str]:
    return {
        "BIZOS_SMTP_HOST": "127.0.0.1",
        "BIZOS_SMTP_PORT": str(port),
        "BIZOS_SMTP_SECURITY": "none",
        "BIZOS_EMAIL_QUEUE": queue,
        **more,
    }


def smtp_ctl(port: int, **kw: Any) -> Control:
    return Control(Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", **kw))


@pytest.fixture
def shop(fleet: Control) -> str:
    from bizosctl.tenancy.provision import create_tenant
    from tenant_schema.models import Customer, Invoice

    slug = unique_slug("em")
    create_tenant(fleet, slug=slug, name="Mail shop", tier="schema", region="id")
    seed(fleet, slug)
    with tenant_session(fleet, slug, actor="test") as s:
        tid = fleet.route(slug).tenant_id
        evil = s.execute(
            insert(Customer)
            .values(tenant_id=tid, name="<script>x()</script> Ltd")
            .returning(Customer.id)
        ).scalar_one()
        s.execute(
            insert(Invoice).values(
                tenant_id=tid,
                customer_id=evil,
                number="INV-XSS-1",
                status="sent",
                total=100,
                issued_on=dt.date(2026, 1, 1),
                due_on=dt.date(2026, 2, 1),
            )
        )
    return slug


def attempts(ctl: Control, slug: str) -> list[Any]:
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return list(
            s.execute(
                text("SELECT outcome, smtp_code, error FROM email_attempts ORDER BY at")
            ).all()
        )


def message_status(ctl: Control, slug: str) -> list[str]:
    with tenant_session(ctl, slug, actor="test", read_only=True) as s:
        return list(s.execute(text("SELECT status FROM email_messages")).scalars())


def test_the_digest_is_emailed_by_a_worker_with_plain_and_escaped_html_parts(
    ctl: Control,
    cli: Any,
    jobs: dict[str, Any],
    shop: str,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    env = smtp_env(port, jobs["queue"])
    r = cli(
        "tenant",
        "email-sender",
        shop,
        "--from",
        "digest@shop.example",
        "--from-name",
        "Toko & Co",
        "--primary-color",
        "#0f766e",
        "--logo-url",
        "https://cdn.shop.example/logo.png",
        "--json",
    )
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["sender"]["own"] is True
    r = cli("digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--json", env=env)
    assert r.exit_code == 0, r.stdout
    d = json.loads(r.stdout)["digests"][0]
    assert d["delivered"] == ["card", "email"] and d["emails"] == 1
    assert "@" not in r.stdout  # no address in the output
    w = worker(jobs, env=env).started()
    try:
        wait_for("the e-mail", lambda: inbox.messages, timeout=20)
    except AssertionError:
        raise AssertionError((w.lines, attempts(ctl, shop))) from None
    (env_,) = inbox.messages
    assert env_.rcpt_tos == [f"ayu@{shop}.example"]  # the Admin, decrypted at send time
    assert env_.mail_from == "digest@shop.example"
    msg = email.message_from_bytes(env_.content, policy=email.policy.default)
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Toko & Co", "digest@shop.example")
    assert msg["Subject"] == f"Your digest for {DAY.isoformat()}"
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Good morning Ayu," in plain and "INV-XSS-1" in plain
    assert "<script>x()</script>" in plain  # plain text is not HTML: as written
    assert "<script>" not in html and "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "#0f766e" in html and 'src="https://cdn.shop.example/logo.png"' in html
    wait_for("the attempt", lambda: message_status(ctl, shop) == ["sent"])
    assert [a.outcome for a in attempts(ctl, shop)] == ["sent"]
    r = cli("email", "list", shop, "--json")
    (m,) = json.loads(r.stdout)["messages"]
    assert m["status"] == "sent" and m["tries"][0]["outcome"] == "sent" and "@" not in r.stdout


def test_smtp_down_the_digest_is_stored_and_the_email_retried_by_the_job_system(
    ctl: Control,
    cli: Any,
    jobs: dict[str, Any],
    shop: str,
) -> None:
    port = free_port()  # nothing listens there yet
    env = smtp_env(
        port, jobs["queue"], BIZOS_WORKER_RETRY_MAX_ATTEMPTS="50", BIZOS_WORKER_RETRY_BACKOFF="0.1"
    )
    r = cli("digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--json", env=env)
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["digests"][0]["created"] is True
    assert count(ctl, shop, "digests") == 1
    worker(jobs, env=env).started()
    wait_for("two failed attempts", lambda: len(attempts(ctl, shop)) >= 2)
    assert message_status(ctl, shop) == ["queued"]
    failed = attempts(ctl, shop)
    assert all(a.outcome == "failed" and "ConnectionRefusedError" in a.error for a in failed)
    inbox = Inbox()
    server = start_smtp(inbox, port)
    try:
        wait_for("the retried e-mail", lambda: inbox.messages)
        wait_for("sent", lambda: message_status(ctl, shop) == ["sent"])
    finally:
        server.stop()
    outcomes = [a.outcome for a in attempts(ctl, shop)]
    assert outcomes[-1] == "sent" and set(outcomes[:-1]) == {"failed"}
    assert len(inbox.messages) == 1
    # The digest is not made again by a re-run, and its sent e-mail is not re-sent.
    r = cli("digest", "run", "--tenant", shop, "--date", DAY.isoformat(), "--json", env=env)
    assert json.loads(r.stdout)["digests"][0]["created"] is False


def test_a_refusal_for_good_fails_the_email_at_once_without_the_address(
    ctl: Control, shop: str, smtp: tuple[Inbox, int]
) -> None:
    from bizosctl.digest.run import make_digest, tenant_refs
    from bizosctl.notify.email import send_message

    inbox, port = smtp
    inbox.refuse = f"550 5.1.1 <ayu@{shop}.example>: no such mailbox"
    mctl = smtp_ctl(port)
    d = make_digest(mctl, tenant_refs(mctl, [shop])[0], day=DAY)
    with tenant_session(ctl, shop, actor="test", read_only=True) as s:
        (mid,) = s.execute(
            text("SELECT id FROM email_messages WHERE digest_id = :d"), {"d": d.id}
        ).scalars()
    assert send_message(mctl, shop, mid) == "failed"
    (a,) = attempts(ctl, shop)
    assert a.outcome == "failed" and a.smtp_code == 550
    assert "@" not in a.error and "<address>" in a.error
    assert message_status(ctl, shop) == ["failed"]
    assert send_message(mctl, shop, mid) == "skipped"  # a failed message is not sent again
    assert inbox.messages == []


# aiosmtpd warns, per connection and in its own thread, of AUTH without TLS (loopback here)
# and reads its own deprecated Session.login_data.
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_the_smtp_password_is_sealed_used_to_log_in_and_never_printed(
    ctl: Control, cli: Any, shop: str
) -> None:
    from bizosctl.digest.run import make_digest, tenant_refs
    from bizosctl.notify.email import send_message

    runner = CliRunner()
    reset_settings()
    r = runner.invoke(app, ["email", "smtp-password", "--json"], input="s3cret-pw\n")
    assert r.exit_code == 0, r.stdout
    sealed = ctl.settings.home / "smtp.sealed"
    try:
        assert sealed.stat().st_mode & 0o777 == 0o600
        assert b"s3cret" not in sealed.read_bytes()
        r = cli(
            "email",
            "status",
            "--json",
            env={"BIZOS_SMTP_HOST": "127.0.0.1", "BIZOS_SMTP_USERNAME": "mailer"},
        )
        doc = json.loads(r.stdout)
        assert doc["password_set"] is True and "s3cret" not in r.stdout
        # The rotation of the credentials key reseals it; it still opens.
        r = cli("secrets", "rotate", "db-credentials", "--json")
        assert r.exit_code == 0, r.stdout
        assert b"s3cret" not in sealed.read_bytes()
        inbox, port = Inbox(), free_port()
        server = start_smtp(
            inbox, port, authenticator=inbox, auth_require_tls=False, auth_required=True
        )
        try:
            mctl = smtp_ctl(port, smtp_username="mailer")
            d = make_digest(mctl, tenant_refs(mctl, [shop])[0], day=DAY)
            with tenant_session(ctl, shop, actor="test", read_only=True) as s:
                (mid,) = s.execute(
                    text("SELECT id FROM email_messages WHERE digest_id = :d"), {"d": d.id}
                ).scalars()
            assert send_message(mctl, shop, mid) == "sent"
        finally:
            server.stop()
        assert inbox.logins[-1] == (b"mailer", b"s3cret-pw")
        assert "s3cret" not in json.dumps(dict(os.environ))
    finally:
        sealed.unlink(missing_ok=True)


def test_smtp_password_from_empty_stdin_exits_2() -> None:
    reset_settings()
    r = CliRunner().invoke(app, ["email", "smtp-password", "--json"], input="")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"] == "no password on stdin"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--primary-color", "red"), "--primary-color 'red': use #rrggbb"),
        (("--from", "not-an-address"), "--from: not an e-mail address"),
        (("--logo-url", "http://insecure.example/l.png"), "--logo-url: an https:// URL"),
        (("--from-name", "Evil\r\nBcc: x"), "--from-name: up to 100 characters"),
    ],
    ids=["colour", "from", "logo", "header-injection"],
)
def test_email_sender_bad_input_exits_2(
    cli: Any, make_tenant: Any, args: tuple[str, ...], message: str
) -> None:
    r = cli("tenant", "email-sender", make_tenant(), *args, "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"].startswith(message)


def test_email_sender_dry_run_changes_nothing(cli: Any, make_tenant: Any) -> None:
    slug = make_tenant()
    r = cli("tenant", "email-sender", slug, "--from-name", "Acme", "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["sender"]["from_name"] == "Acme"
    r = cli("tenant", "email-sender", slug, "--json")
    shown = json.loads(r.stdout)["sender"]
    assert shown["own"] is False and shown["from_name"] is None


def test_an_unknown_tenant_sender_exits_3(cli: Any) -> None:
    r = cli("tenant", "email-sender", "nosuch" + uuid.uuid4().hex[:6], "--json")
    assert r.exit_code == 3


# -- TLS: STARTTLS and implicit TLS against a server whose certificate a private CA signed ----


def tls_files(tmp_path: Any) -> tuple[Any, Any]:
    """A CA and a server certificate for 127.0.0.1 it signed: the server's SSL context and
    the CA's PEM file (what BIZOS_SMTP_CA_FILE names)."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mail CA")])
    ca_cert = cert("test mail CA", ca_key, ca_name, ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = cert("127.0.0.1", srv_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp_path / "srv.pem").write_bytes(srv_cert.public_bytes(pem))
    (tmp_path / "srv.key").write_bytes(
        srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    return ctx, tmp_path / "ca.pem"


def _digest_message(ctl: Control, mctl: Control, shop: str) -> uuid.UUID:
    from bizosctl.digest.run import make_digest, tenant_refs

    d = make_digest(mctl, tenant_refs(mctl, [shop])[0], day=DAY)
    with tenant_session(ctl, shop, actor="test", read_only=True) as s:
        (mid,) = s.execute(
            text("SELECT id FROM email_messages WHERE digest_id = :d"), {"d": d.id}
        ).scalars()
    return uuid.UUID(str(mid))


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_a_private_ca_delivers(
    ctl: Control, shop: str, tmp_path: Any, security: str
) -> None:
    """STARTTLS (the server refuses mail before it) and implicit TLS, the server's certificate
    checked against BIZOS_SMTP_CA_FILE."""
    from bizosctl.notify.email import send_message

    server_ctx, ca = tls_files(tmp_path)
    inbox, port = Inbox(), free_port()
    kw: dict[str, Any] = (
        {"tls_context": server_ctx, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": server_ctx}
    )
    server = start_smtp(inbox, port, **kw)
    try:
        mctl = smtp_ctl(port, smtp_ca_file=ca)
        mctl.settings.smtp_security = security  # type: ignore[misc]
        mid = _digest_message(ctl, mctl, shop)
        assert send_message(mctl, shop, mid) == "sent"
    finally:
        server.stop()
    (msg,) = inbox.messages
    assert msg.rcpt_tos == [f"ayu@{shop}.example"]
    assert message_status(ctl, shop) == ["sent"]


@pytest.mark.parametrize("offer_tls", [True, False])
def test_no_mail_goes_to_a_server_that_fails_tls(
    ctl: Control, shop: str, tmp_path: Any, offer_tls: bool
) -> None:
    """A certificate no trusted CA signed (a machine in the middle), or a server that does
    not offer STARTTLS (a downgrade): nothing is sent in clear, the attempt is recorded and
    the job system is told to retry."""
    from bizosctl.notify.email import SmtpUnavailable, send_message

    server_ctx, _ = tls_files(tmp_path)
    inbox, port = Inbox(), free_port()
    server = start_smtp(inbox, port, **({"tls_context": server_ctx} if offer_tls else {}))
    try:
        mctl = smtp_ctl(port)  # the system's trust store only
        mctl.settings.smtp_security = "starttls"  # type: ignore[misc]
        mid = _digest_message(ctl, mctl, shop)
        with pytest.raises(SmtpUnavailable):
            send_message(mctl, shop, mid)
    finally:
        server.stop()
    assert inbox.messages == []
    (a,) = attempts(ctl, shop)
    assert a.outcome == "failed"
    assert ("CERTIFICATE_VERIFY_FAILED" in a.error) if offer_tls else ("STARTTLS" in a.error)
    assert message_status(ctl, shop) == ["queued"]
