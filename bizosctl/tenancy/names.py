"""Validation of user-chosen names, and the database identifiers derived from them."""

from __future__ import annotations

import re

from bizosctl.errors import InvalidInput

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{2,39}$")
REGION_RE = re.compile(r"^[a-z][a-z0-9-]{1,29}$")
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


def q(ident: str) -> str:
    """A quoted SQL identifier."""
    return '"' + ident.replace('"', '""') + '"'


def check_slug(slug: str) -> str:
    if not SLUG_RE.match(slug):
        raise InvalidInput(
            f"invalid tenant slug {slug!r}: use 3-40 characters, lowercase letters, digits and "
            "'-', starting with a letter"
        )
    if slug in RESERVED_SLUGS or slug.startswith(("pg-", "bizos-")):
        raise InvalidInput(f"tenant slug {slug!r} is reserved; choose another")
    return slug


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise InvalidInput(f"unknown tier {tier!r}: choose one of {', '.join(TIERS)}")
    return tier


def check_region_name(name: str) -> str:
    if not REGION_RE.match(name):
        raise InvalidInput(
            f"invalid region name {name!r}: use 2-30 characters, lowercase letters, digits and "
            "'-', starting with a letter"
        )
    return name


def tenant_ident(slug: str) -> str:
    """``t_<slug>`` with '-' as '_': the schema, database and login role of a tenant."""
    return "t_" + check_slug(slug).replace("-", "_")
