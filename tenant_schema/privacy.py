"""What erasure does to each tenant table that can hold a person's data (GDPR Art. 17).

One :class:`Policy` per table, next to the models: how its rows link to the person (a SQL
predicate on alias ``t``, with the tenant as ``:tid``, the person's member ids ``:mids``,
customer ids ``:cids`` (both ``text[]`` of uuids), blind indexes ``:bidx`` under every live
key version and audit actors ``:actors``), and what erasure does with them:

- ``delete``: the rows go (sessions, notifications, consents, the person's own documents);
- ``anonymise``: the row is kept and the person's data in it replaced (``set``), with the
  legal reason: invoices reference the customer and are tax records, kept for the region's
  retention (setting ``gdpr_retention_years``; Art. 17(3)(b));
- ``keep``: kept as is, with the reason (the row holds no personal data of its own).

The order is the order of erasure: children before their parents. Every table not listed
here holds nothing about a person (a test keeps the list complete: a new table with a member
or customer reference fails it until someone decides its policy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["delete", "anonymise", "keep"]

MIDS = "CAST(:mids AS uuid[])"
CIDS = "CAST(:cids AS uuid[])"
_SESSIONS = (
    f"SELECT s.id FROM auth_sessions AS s WHERE s.tenant_id = :tid AND s.member_id = ANY({MIDS})"
)
_DOCS = f"SELECT d.id FROM documents AS d WHERE d.tenant_id = :tid AND d.created_by = ANY({MIDS})"
_INVOICES = (
    f"SELECT i.id FROM invoices AS i WHERE i.tenant_id = :tid AND i.customer_id = ANY({CIDS})"
)

#: The person's e-mails, and other members' e-mails that quote them in clear (a digest naming
#: a customer): the delivery log is no record that must be kept.
_QUOTES = "{t}.context::text ~* CAST(:pattern AS text) OR {t}.subject ~* CAST(:pattern AS text)"
_MESSAGES = (
    "SELECT m.id FROM email_messages AS m WHERE m.tenant_id = :tid AND "
    f"(m.member_id = ANY({MIDS}) OR " + _QUOTES.format(t="m") + ")"
)


def _scrub_text(col: str) -> str:
    """jsonb -> jsonb: the person's e-mail and names replaced inside the values (they hold no
    quote or backslash, so the JSON stays valid)."""
    return f"CAST(regexp_replace({col}::text, CAST(:pattern AS text), '<erased>', 'gi') AS jsonb)"


#: jsonb -> jsonb: every string value (and nested object or array: a digest's figures)
#: replaced, except the row's keys (the fact of the change, which row and when, stays; the
#: person's data in it does not).
SCRUB = (
    "(SELECT jsonb_object_agg(e.key, CASE WHEN e.key IN ('id', 'tenant_id') "
    "OR jsonb_typeof(e.value) NOT IN ('string', 'object', 'array') THEN e.value "
    "ELSE '\"<erased>\"'::jsonb END) FROM jsonb_each({col}) AS e)"
)


def _refs(key: str, ids: str) -> str:
    arr = f"ANY(CAST({ids} AS text[]))"
    return f"(t.old ->> '{key}' = {arr} OR t.new ->> '{key}' = {arr})"


AUDIT_LINK = " OR ".join(
    [
        "(t.table_name = 'members' AND t.row_key ->> 'id' = ANY(CAST(:mids AS text[])))",
        "(t.table_name = 'customers' AND t.row_key ->> 'id' = ANY(CAST(:cids AS text[])))",
        "(t.row_key ->> 'member_id' = ANY(CAST(:mids AS text[])))",
        "(t.table_name = 'login_throttle' AND t.row_key ->> 'email_bidx' = ANY(:bidx))",
        _refs("member_id", ":mids"),
        _refs("assignee_id", ":mids"),
        _refs("created_by", ":mids"),
        _refs("customer_id", ":cids"),
        "t.actor = ANY(:actors)",
    ]
)
#: Erasure only: audit rows quoting the e-mail or a name in clear (``find`` and ``export``
#: never scan plain text, and need not read every audit row's JSON as text).
AUDIT_TEXT = "t.old::text ~* CAST(:pattern AS text) OR t.new::text ~* CAST(:pattern AS text)"


@dataclass(frozen=True)
class Policy:
    table: str
    action: Action
    link: str  # SQL predicate on alias t (the tenant filter is added by the caller)
    reason: str
    set: str | None = None  # anonymise: the SET clause
    retention: bool = False  # kept for the region's retention (gdpr_retention_years)
    text_link: str | None = None  # erasure only: rows that quote the person in clear

    def where(self, *, erasing: bool = False) -> str:
        """The predicate (tenant filter included) for reading or, ``erasing``, for erasure."""
        link = self.link if not (erasing and self.text_link) else f"{self.link} OR {self.text_link}"
        return f"t.tenant_id = :tid AND ({link})"


POLICIES: tuple[Policy, ...] = (
    Policy("refresh_tokens", "delete", f"t.session_id IN ({_SESSIONS})", "login tokens"),
    Policy("auth_sessions", "delete", f"t.member_id = ANY({MIDS})", "login sessions"),
    Policy("member_identities", "delete", f"t.member_id = ANY({MIDS})", "OAuth accounts"),
    Policy("login_throttle", "delete", "t.email_bidx = ANY(:bidx)", "failed-login counters"),
    Policy(
        "notifications",
        "delete",
        f"t.member_id = ANY({MIDS})",
        "the person's notifications, and others' that quote them (a digest's card)",
        text_link="t.title ~* CAST(:pattern AS text) OR t.body ~* CAST(:pattern AS text)",
    ),
    Policy("consents", "delete", f"t.member_id = ANY({MIDS})", "the person's consents"),
    Policy("document_chunks", "delete", f"t.document_id IN ({_DOCS})", "the person's documents"),
    Policy("documents", "delete", f"t.created_by = ANY({MIDS})", "the person's own documents"),
    Policy(
        "email_attempts",
        "delete",
        f"t.message_id IN ({_MESSAGES})",
        "the delivery log of e-mails to or about the person",
    ),
    Policy(
        "email_messages",
        "delete",
        f"t.member_id = ANY({MIDS})",
        "e-mails to the person, and others' e-mails that quote them (the log is no record)",
        text_link=_QUOTES.format(t="t"),
    ),
    Policy(
        "digests",
        "anonymise",
        "false",
        "the tenant's daily report is kept; the person's name or e-mail in it is replaced",
        text_link=(
            "t.figures::text ~* CAST(:pattern AS text) "
            "OR t.insights::text ~* CAST(:pattern AS text)"
        ),
        set="figures = " + _scrub_text("t.figures") + ", insights = " + _scrub_text("t.insights"),
    ),
    Policy("project_members", "delete", f"t.member_id = ANY({MIDS})", "project access"),
    Policy("member_roles", "delete", f"t.member_id = ANY({MIDS})", "the person's roles"),
    Policy(
        "tasks",
        "anonymise",
        f"t.assignee_id = ANY({MIDS})",
        "the team's work is kept, unassigned",
        set="assignee_id = NULL",
    ),
    Policy(
        "ai_usage",
        "anonymise",
        f"t.member_id = ANY({MIDS})",
        "the tenant's usage and billing record is kept without the person",
        set="member_id = NULL",
    ),
    Policy("members", "delete", f"t.id = ANY({MIDS})", "the person's account"),
    Policy(
        "invoice_items",
        "keep",
        f"t.invoice_id IN ({_INVOICES})",
        "tax record (GDPR Art. 17(3)(b)); holds no personal data of its own",
        retention=True,
    ),
    Policy(
        "transactions",
        "keep",
        f"t.invoice_id IN ({_INVOICES})",
        "tax record (GDPR Art. 17(3)(b)); holds no personal data of its own",
        retention=True,
    ),
    Policy(
        "invoices",
        "keep",
        f"t.customer_id = ANY({CIDS})",
        "tax record (GDPR Art. 17(3)(b)); holds no personal data of its own",
        retention=True,
    ),
    Policy(
        "customers",
        "anonymise",
        f"t.id = ANY({CIDS})",
        "invoices reference the customer: tax records kept for the region's retention "
        "(GDPR Art. 17(3)(b)); name and e-mail replaced",
        set="name = 'erased customer ' || left(t.id::text, 8), email_enc = NULL, email_bidx = NULL",
        retention=True,
    ),
    Policy(
        "audit_logs",
        "anonymise",
        AUDIT_LINK,
        "the fact of each change is kept; the person's data in it is not",
        text_link=AUDIT_TEXT,
        set=(
            "old = " + SCRUB.format(col="t.old") + ", new = " + SCRUB.format(col="t.new")
            + ", row_key = " + SCRUB.format(col="t.row_key")
            + ", actor = CASE WHEN t.actor = ANY(:actors) THEN 'erased-subject' ELSE t.actor END"
        ),
    ),
)  # fmt: skip

BY_TABLE = {p.table: p for p in POLICIES}
#: Tables holding nothing about a person (checked complete by a test, with POLICIES).
NOT_PERSONAL = (
    "ai_spend",
    "email_senders",
    "onboarding_progress",
    "outbox",
    "permissions",
    "projects",
    "roles",
    "settings",
    "tenant_state",
)
