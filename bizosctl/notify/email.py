"""E-mail: SMTP settings, tenants' white-label senders, Jinja2 templates, durable sending.

- SMTP: ``BIZOS_SMTP_HOST``, ``_PORT``, ``_SECURITY`` (starttls | tls | none), ``_USERNAME``;
  the password is sealed with the keyring's ``db-credentials`` key in ``$BIZOS_HOME/smtp.sealed``
  (``bizosctl email smtp-password`` reads it from stdin or a hidden prompt; never argv, never
  the environment), and is resealed by ``secrets rotate-credentials`` like every credential.
- A tenant's sender (``email_senders``, ``bizosctl tenant email-sender``): from address and
  name, reply-to, logo URL and two colours; the platform's ``email_from`` otherwise.
- Templates: ``templates/<name>.txt.j2`` (plain) and ``<name>.html.j2`` (HTML, autoescaped),
  rendered with the context, the sender and the recipient's first name.
- Sending: :func:`queue_message` writes one ``email_messages`` row per recipient in the
  caller's transaction (the address is not copied: it is decrypted from the member when
  sending); :func:`defer_send` defers one ``email.send`` job per message (a queueing lock per
  message); :func:`send_message` is one attempt, recorded in ``email_attempts`` whatever the
  outcome. A server that is down or answers 4xx is retried by the job system (backoff of
  ``BIZOS_WORKER_RETRY_*``); a 5xx refusal fails the message at once.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import smtplib
import ssl
import uuid
from email.message import EmailMessage as MimeMessage
from email.utils import formataddr, make_msgid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import insert, select, update

from bizosctl.errors import BizosError, InvalidInput

if TYPE_CHECKING:
    import jinja2
    from sqlalchemy.orm import Session

    from bizosctl.catalog.control import Control

SEALED_FILE = "smtp.sealed"
SEAL_CONTEXT = "smtp:password"
SEND_TASK = "email.send"
ACTOR = "bizosctl:email"
_EMAIL = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_ADDRESS = re.compile(r"^[^\s<>@\"',;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


class SmtpUnavailable(BizosError):
    """The SMTP server is down or deferred the message: the job system retries."""

    retryable = True


class SenderPublic(BaseModel):
    tenant: str
    from_address: str
    from_name: str | None
    reply_to: str | None
    logo_url: str | None
    primary_color: str
    accent_color: str
    own: bool  # False: the platform's defaults (no row yet)


class Rendered(BaseModel):
    subject: str
    text: str
    html: str


# -- the SMTP password --------------------------------------------------------------------------
def _sealed_path(ctl: Control) -> Path:
    return Path(ctl.settings.home) / SEALED_FILE


def set_smtp_password(ctl: Control, password: str) -> None:
    """Seal the SMTP password (file mode 0600, written atomically)."""
    if not password or "\n" in password:
        raise InvalidInput("the SMTP password is empty or has a line break")
    path = _sealed_path(ctl)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ctl.seal(password, context=SEAL_CONTEXT))
    os.replace(tmp, path)


def sealed_smtp_password(ctl: Control) -> str | None:
    """The sealed token (for the credentials rotation), or None."""
    path = _sealed_path(ctl)
    return path.read_text().strip() if path.exists() else None


def reseal_smtp_password(ctl: Control, reseal: Any) -> None:
    """Write the token again through ``reseal(token, context)`` (the credentials rotation)."""
    token = sealed_smtp_password(ctl)
    if token:
        fd = os.open(
            _sealed_path(ctl).with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(reseal(token, SEAL_CONTEXT))
        os.replace(_sealed_path(ctl).with_suffix(".tmp"), _sealed_path(ctl))


def _smtp_password(ctl: Control) -> str | None:
    token = sealed_smtp_password(ctl)
    return ctl.unseal(token, context=SEAL_CONTEXT) if token else None


def smtp_status(ctl: Control) -> dict[str, Any]:
    s = ctl.settings
    return {
        "host": s.smtp_host,
        "port": s.smtp_port,
        "security": s.smtp_security,
        "username_set": bool(s.smtp_username),
        "password_set": sealed_smtp_password(ctl) is not None,
        "from": s.email_from,
        "configured": bool(s.smtp_host),
    }


# -- senders -------------------------------------------------------------------------------------
def _check_sender(fields: dict[str, Any]) -> None:
    for key, option in (("from_address", "--from"), ("reply_to", "--reply-to")):
        v = fields.get(key)
        if v is not None and not _ADDRESS.match(v):
            raise InvalidInput(f"{option}: not an e-mail address")
    for key in ("primary_color", "accent_color"):
        v = fields.get(key)
        if v is not None and not _COLOR.match(v):
            raise InvalidInput(f"--{key.split('_')[0]}-color {v!r}: use #rrggbb")
    logo = fields.get("logo_url")
    if logo is not None and not logo.startswith("https://"):
        raise InvalidInput("--logo-url: an https:// URL")
    name = fields.get("from_name")
    if name is not None and (len(name) > 100 or any(c in name for c in '\r\n<>"')):
        raise InvalidInput("--from-name: up to 100 characters, no line breaks, <, > or quotes")


def get_sender(ctl: Control, slug: str, s: Session | None = None) -> SenderPublic:
    """The tenant's sender settings (the platform's defaults where it has none)."""
    from tenant_schema.models import EmailSender

    if s is None:
        from bizosctl.tenancy.router import tenant_session

        with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as own:
            return get_sender(ctl, slug, own)
    row = s.execute(select(EmailSender)).scalar_one_or_none()
    if row is None:
        return SenderPublic(
            tenant=slug,
            from_address=ctl.settings.email_from,
            from_name=None,
            reply_to=None,
            logo_url=None,
            primary_color="#1f2937",
            accent_color="#2563eb",
            own=False,
        )
    return SenderPublic(
        tenant=slug,
        from_address=row.from_address or ctl.settings.email_from,
        from_name=row.from_name,
        reply_to=row.reply_to,
        logo_url=row.logo_url,
        primary_color=row.primary_color,
        accent_color=row.accent_color,
        own=True,
    )


def set_sender(ctl: Control, slug: str, *, dry_run: bool = False, **fields: Any) -> SenderPublic:
    """Change the tenant's sender settings (only the fields given; ``""`` clears one)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from bizosctl.digest.run import ctl_tenant_id
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import EmailSender

    given = {k: (v or None) for k, v in fields.items() if v is not None}
    _check_sender(given)
    with tenant_session(ctl, slug, actor=ACTOR, read_only=dry_run) as s:
        if dry_run:
            current = get_sender(ctl, slug, s)
            return current.model_copy(update={k: v for k, v in given.items() if v is not None})
        values = {k: v for k, v in given.items() if not k.endswith("_color") or v}
        stmt = pg_insert(EmailSender).values(tenant_id=ctl_tenant_id(s), **values)
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id"], set_={**values, "updated_at": dt.datetime.now(dt.UTC)}
            )
        )
        return get_sender(ctl, slug, s)


# -- templates ----------------------------------------------------------------------------------
@cache
def _env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("bizosctl.notify", "templates"),
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(
    template: str, *, subject: str, context: dict[str, Any], sender: SenderPublic, name: str
) -> Rendered:
    """The plain and HTML parts of ``template`` (a name under ``templates/``)."""
    import jinja2

    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", template):
        raise InvalidInput(f"template {template!r}: not a template name")
    env = _env()
    values = {**context, "subject": subject, "sender": sender.model_dump(), "name": name}
    try:
        text = env.get_template(f"{template}.txt.j2").render(values)
        html = env.get_template(f"{template}.html.j2").render(values)
    except jinja2.TemplateNotFound as exc:
        raise InvalidInput(f"no e-mail template {template!r}") from exc
    return Rendered(subject=subject, text=text, html=html)


# -- queueing and sending -------------------------------------------------------------------------
def queue_message(
    s: Session,
    *,
    member_id: uuid.UUID,
    template: str,
    subject: str,
    context: dict[str, Any],
    digest_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """One e-mail to ``member_id`` in the caller's transaction; its id (defer it after the
    commit with :func:`defer_send`)."""
    from sqlalchemy import text

    from tenant_schema.models import EmailMessage

    return s.execute(
        insert(EmailMessage)
        .values(
            tenant_id=text("NULLIF(current_setting('bizos.tenant_id', true), '')::uuid"),
            member_id=member_id,
            template=template,
            subject=subject[:200],
            context=context,
            digest_id=digest_id,
        )
        .returning(EmailMessage.id)
    ).scalar_one()


def queued_messages(
    ctl: Control, slug: str, *, digest_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import EmailMessage

    with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as s:
        stmt = select(EmailMessage.id).where(EmailMessage.status == "queued")
        if digest_id is not None:
            stmt = stmt.where(EmailMessage.digest_id == digest_id)
        return list(s.execute(stmt).scalars())


def defer_send(ctl: Control, slug: str, ids: list[uuid.UUID]) -> int:
    """One ``email.send`` job per message (one already queued is left alone); how many new."""
    from bizosctl.jobs.queue import enqueue_task

    n = 0
    with ctl.catalog() as s:
        for mid in ids:
            job = enqueue_task(
                s,
                task=SEND_TASK,
                args={"tenant": slug, "message_id": str(mid)},
                queue=ctl.settings.email_queue,
                lock=f"email:{slug}:{mid}",
                queueing_lock=f"email:{slug}:{mid}",
            )
            n += job is not None
    return n


def scrub(text: str) -> str:
    """An error text without addresses (a server's refusal often quotes the recipient)."""
    return _EMAIL.sub("<address>", text)[:500]


def _connect(ctl: Control) -> smtplib.SMTP:
    s = ctl.settings
    if not s.smtp_host:
        raise SmtpUnavailable("no SMTP server is configured (BIZOS_SMTP_HOST)")
    # Certificate and host name always checked (a relay with a private CA: BIZOS_SMTP_CA_FILE);
    # STARTTLS that the server does not offer fails rather than sending in clear.
    context = ssl.create_default_context(cafile=str(s.smtp_ca_file) if s.smtp_ca_file else None)
    conn: smtplib.SMTP
    if s.smtp_security == "tls":
        conn = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context)
    else:
        conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
    try:  # a failed STARTTLS or login leaves no connection open
        if s.smtp_security == "starttls":
            conn.starttls(context=context)
        if s.smtp_username:
            password = _smtp_password(ctl)
            if password is None:
                raise InvalidInput(
                    "BIZOS_SMTP_USERNAME is set but no password is sealed: run "
                    "`bizosctl email smtp-password`"
                )
            conn.login(s.smtp_username, password)
    except BaseException:
        conn.close()
        raise
    return conn


def build(
    ctl: Control, slug: str, message: Any, sender: SenderPublic, to: str, name: str
) -> MimeMessage:
    r = render(
        message.template, subject=message.subject, context=message.context, sender=sender, name=name
    )
    mime = MimeMessage()
    mime["From"] = formataddr((sender.from_name or "", sender.from_address))
    mime["To"] = to
    mime["Subject"] = r.subject
    if sender.reply_to:
        mime["Reply-To"] = sender.reply_to
    domain = sender.from_address.rpartition("@")[2] or "localhost"
    # Stable per message: a receiver seeing a retried send after a lost answer can drop it.
    mime["Message-ID"] = f"<{message.id}@{domain}>" if domain else make_msgid()
    mime["X-Bizos-Tenant"] = slug
    mime.set_content(r.text)
    mime.add_alternative(r.html, subtype="html")
    return mime


def send_message(
    ctl: Control,
    slug: str,
    message_id: uuid.UUID,
    *,
    job_id: int | None = None,
    final: bool = False,
) -> str:
    """One attempt at sending one e-mail: ``sent``, ``failed`` (refused for good, or the last
    attempt), ``skipped`` (sent already, or its member is gone). Raises
    :class:`SmtpUnavailable` when another attempt may succeed (the job is retried)."""
    from bizosctl.security.fields import decrypt
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import EmailMessage, Member

    with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as s:
        msg = s.execute(
            select(EmailMessage).where(EmailMessage.id == message_id)
        ).scalar_one_or_none()
        if msg is None or msg.status != "queued":
            return "skipped"
        member = s.execute(select(Member).where(Member.id == msg.member_id)).scalar_one_or_none()
        if member is not None and member.status == "active":
            sender = get_sender(ctl, slug, s)
            tid, mem_id = msg.tenant_id, member.id
            to = decrypt(
                ctl.keyring,
                member.email_enc,
                tenant_id=tid,
                table="members",
                column="email",
                row=mem_id,
            )
            name = decrypt(
                ctl.keyring,
                member.name_enc,
                tenant_id=tid,
                table="members",
                column="name",
                row=mem_id,
            ).split(" ")[0]
            mime = build(ctl, slug, msg, sender, to, name)
        else:
            member = None
    if member is None:
        _record(
            ctl,
            slug,
            message_id,
            outcome="failed",
            error="the member is gone or inactive",
            job_id=job_id,
            final=True,
        )
        return "failed"
    code: int | None = None
    try:
        conn = _connect(ctl)
        try:
            conn.send_message(mime, from_addr=sender.from_address, to_addrs=[to])
        finally:
            try:
                conn.quit()
            except smtplib.SMTPException:
                conn.close()
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
        said = exc.smtp_error
        said_text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        error = scrub(f"{exc.smtp_code} {said_text}")
        permanent = 500 <= exc.smtp_code < 600
    except smtplib.SMTPRecipientsRefused as exc:
        (code, said_b), *_ = exc.recipients.values() or [(None, b"")]
        said = said_b.decode(errors="replace") if isinstance(said_b, bytes) else str(said_b)
        error = scrub(f"recipient refused: {code} {said}")
        permanent = bool(code and code >= 500)
    except (OSError, smtplib.SMTPException) as exc:
        error, permanent = scrub(f"{type(exc).__name__}: {exc}"), False
    except SmtpUnavailable as exc:
        error, permanent = str(exc), False
    else:
        _record(ctl, slug, message_id, outcome="sent", job_id=job_id)
        return "sent"
    last = permanent or final
    _record(
        ctl, slug, message_id, outcome="failed", error=error, code=code, job_id=job_id, final=last
    )
    if last:
        return "failed"
    raise SmtpUnavailable(f"e-mail {message_id} of {slug}: {error} (retried)")


def _record(
    ctl: Control,
    slug: str,
    message_id: uuid.UUID,
    *,
    outcome: str,
    error: str | None = None,
    code: int | None = None,
    job_id: int | None = None,
    final: bool = False,
) -> None:
    from sqlalchemy import text

    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import EmailAttempt, EmailMessage

    with tenant_session(ctl, slug, actor=ACTOR) as s:
        s.execute(
            insert(EmailAttempt).values(
                tenant_id=text("NULLIF(current_setting('bizos.tenant_id', true), '')::uuid"),
                message_id=message_id,
                outcome=outcome,
                smtp_code=code,
                error=error,
                job_id=job_id,
            )
        )
        values: dict[str, Any] = {"attempts": EmailMessage.attempts + 1, "last_error": error}
        if outcome == "sent":
            values |= {"status": "sent", "sent_at": dt.datetime.now(dt.UTC)}
        elif final:
            values["status"] = "failed"
        s.execute(update(EmailMessage).where(EmailMessage.id == message_id).values(**values))


class AttemptPublic(BaseModel):
    at: dt.datetime
    outcome: str
    smtp_code: int | None
    error: str | None


class MessagePublic(BaseModel):
    id: uuid.UUID
    template: str
    subject: str
    status: str
    attempts: int
    digest_id: uuid.UUID | None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    tries: list[AttemptPublic]


def list_messages(ctl: Control, slug: str, *, limit: int = 50) -> list[MessagePublic]:
    """The tenant's e-mails, newest first, with every attempt (no addresses)."""
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import EmailAttempt, EmailMessage

    with tenant_session(ctl, slug, actor=ACTOR, read_only=True) as s:
        msgs = list(
            s.execute(
                select(EmailMessage)
                .order_by(EmailMessage.created_at.desc(), EmailMessage.id)
                .limit(limit)
            ).scalars()
        )
        tries: dict[uuid.UUID, list[AttemptPublic]] = {}
        if msgs:
            for a in s.execute(
                select(EmailAttempt)
                .where(EmailAttempt.message_id.in_([m.id for m in msgs]))
                .order_by(EmailAttempt.at)
            ).scalars():
                tries.setdefault(a.message_id, []).append(
                    AttemptPublic(at=a.at, outcome=a.outcome, smtp_code=a.smtp_code, error=a.error)
                )
        return [
            MessagePublic(
                id=m.id,
                template=m.template,
                subject=m.subject,
                status=m.status,
                attempts=m.attempts,
                digest_id=m.digest_id,
                created_at=m.created_at,
                sent_at=m.sent_at,
                tries=tries.get(m.id, []),
            )
            for m in msgs
        ]
