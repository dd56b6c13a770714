"""Validation of user-chosen names, and the database identifiers derived from them.

Every database object name of a tenant comes from this module. The mapping is injective: a
new slug has no consecutive and no trailing hyphen, so ``t_<slug>`` (hyphens as underscores)
never contains ``__`` and never ends in ``_``, which leaves the ``__b`` suffix of the second
login role unambiguous. Two slugs can then never name the same database, schema or role
(issue 11, item 0: ``x--b`` used to map onto the rotation role of ``x``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bizosctl.errors import InvalidInput

# Full matches only: with re.match and '$', 'beta\n' passed (issue 11, item 10).
NEW_SLUG_RE = re.compile(r"[a-z](?:[a-z0-9]|-(?!-)){1,38}[a-z0-9]")
#: Slugs of tenants created before the rule above (they may hold '--' or end in '-'): still
#: accepted to look a tenant up, show, move or delete it; never to create one.
SLUG_RE = re.compile(r"[a-z][a-z0-9-]{2,39}")
REGION_RE = re.compile(r"[a-z][a-z0-9-]{1,29}")
TIERS = ("shared", "schema", "isolated")
RESERVED_SLUGS = frozenset(
    {
        "public",
        "shared",
        "admin",
        "root",
        "postgres",
        "template",
        "system",
        "bizos",
        "api",
        "app",
        "www",
        "platform",
        "internal",
        "control",
        "catalog",
        "default",
        "demo",
        "pg-catalog",
        "information-schema",
        "superadmin",
        "support",
        "billing",
        "status",
    }
)

SHARED_DB = "bizos_shared"
SHARED_SCHEMA = "shared"
SHARED_LOGIN = "bizos_app_shared"
#: The second login role of an isolated tenant (password rotation alternates between them).
SECOND_ROLE_SUFFIX = "__b"
NAME_MAX = 200


def q(ident: str) -> str:
    """A quoted SQL identifier."""
    return '"' + ident.replace('"', '""') + '"'


def check_slug(slug: str) -> str:
    """A slug naming an existing tenant (the rule of its time: see ``check_new_slug``)."""
    if not SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            f"invalid tenant slug {slug!r}: use 3-40 characters, lowercase letters, digits and "
            "'-', starting with a letter"
        )
    return slug


def check_new_slug(slug: str) -> str:
    """A slug for a new tenant: 3-40 characters, a letter first, no '--', no trailing '-'."""
    if not NEW_SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            f"invalid tenant slug {slug!r}: use 3-40 characters, lowercase letters, digits and "
            "single '-' between them, starting with a letter (no consecutive or trailing '-')"
        )
    if slug in RESERVED_SLUGS or slug.startswith(("pg-", "bizos-")):
        raise InvalidInput(f"tenant slug {slug!r} is reserved; choose another")
    return slug


def is_new_slug_valid(slug: str) -> bool:
    try:
        check_new_slug(slug)
    except InvalidInput:
        return False
    return True


def _unsafe_char(ch: str) -> bool:
    """Control characters, line separators and bidi overrides (they spoof a terminal)."""
    category = unicodedata.category(ch)
    return (
        category in ("Cc", "Zl", "Zp")
        or ch in "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
        or ("\u2066" <= ch <= "\u2069")
    )


def check_tenant_name(name: str) -> str:
    """A tenant's display name: not empty, at most NAME_MAX characters, no control characters."""
    if not name.strip():
        raise InvalidInput("the tenant name must not be empty")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"tenant name is too long ({len(name)} characters; at most {NAME_MAX})")
    if any(_unsafe_char(ch) for ch in name):
        raise InvalidInput("tenant name must not contain control characters")
    return name


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise InvalidInput(f"unknown tier {tier!r}: choose one of {', '.join(TIERS)}")
    return tier


def check_region_name(name: str) -> str:
    if not REGION_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid region name {name!r}: use 2-30 characters, lowercase letters, digits and "
            "'-', starting with a letter"
        )
    return name


def tenant_ident(slug: str) -> str:
    """``t_<slug>`` with '-' as '_': the schema, database and first login role of a tenant."""
    return "t_" + check_slug(slug).replace("-", "_")


def login_roles(database: str) -> tuple[str, str]:
    """An isolated tenant's two login roles, from its database name: ``t_x`` and ``t_x__b``."""
    return database, database + SECOND_ROLE_SUFFIX


def other_login_role(database: str, role: str) -> str:
    """The login role a password rotation switches to (the one of the two not in use)."""
    first, second = login_roles(database)
    if role not in (first, second):
        raise InvalidInput(
            f"login role {role} is not one of {first}, {second} (database {database}): "
            "run `bizosctl doctor`"
        )
    return second if role == first else first


@dataclass(frozen=True)
class TenantNames:
    """Every name a slug may occupy on a server, whatever its tier (a move may need them)."""

    database: str
    schema: str
    roles: tuple[str, str]

    def all(self) -> set[str]:
        return {self.database, self.schema, *self.roles}


def tenant_names(slug: str) -> TenantNames:
    ident = tenant_ident(slug)
    return TenantNames(database=ident, schema=ident, roles=login_roles(ident))
