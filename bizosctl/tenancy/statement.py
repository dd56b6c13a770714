"""What ``tenant query`` refuses to send: statements that could leave the tenant's context.

The database confines the application role to the tenant named by ``bizos.tenant_id``, which
the role itself may change (PostgreSQL has no read-only custom settings). So the operator's
statement must not end the transaction the context lives in, change settings, or run SQL text
that this check cannot see. The check is lexical and conservative: a refused name anywhere in
the statement, even inside a string, refuses it. What it lets through is then run as exactly
one statement (the extended protocol refuses a second one), and the context is compared
after it (:func:`bizosctl.tenancy.lifecycle.run_query`).
"""

from __future__ import annotations

import re

from bizosctl.errors import InvalidInput

#: First keywords that end or split the transaction (the context dies with it), or whose
#: objects outlive it on a pooled connection.
_TRANSACTION = frozenset(
    {"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}
)
_OUTLIVE = frozenset({"prepare", "execute", "deallocate", "declare", "listen"})
_SETTINGS = frozenset({"set", "reset", "discard"})
_CODE = frozenset({"do", "call", "load"})

#: Functions that change settings, or run SQL text given as a value (which could build the
#: name ``set_config`` out of pieces).
_FUNCTIONS = re.compile(
    r"\b(set_config|query_to_xml|query_to_xmlschema|query_to_xml_and_xmlschema|"
    r"cursor_to_xml|cursor_to_xmlschema|ts_stat|ts_rewrite)\b",
    re.IGNORECASE,
)
#: An UPDATE of this view is a set_config() (a rewrite rule).
_SETTINGS_VIEW = re.compile(r"\bpg_settings\b", re.IGNORECASE)
#: Unicode-escaped identifiers and strings (U&"\0073et_config") hide a name from the check.
_UNICODE_ESCAPE = re.compile(r"\bu&['\"]", re.IGNORECASE)
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|\()+")
_WORD = re.compile(r"[A-Za-z_]+")


def _skip_leading(sql: str) -> str:
    """The statement without leading blanks, ``--`` and (nested) ``/* */`` comments, '('."""
    pos = 0
    while True:
        m = _LEADING_NOISE.match(sql, pos)
        if m:
            pos = m.end()
        if sql.startswith("/*", pos):
            depth, pos = 1, pos + 2
            while depth and pos < len(sql):
                if sql.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif sql.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
            continue
        if not m:
            return sql[pos:]


def first_keyword(sql: str) -> str:
    m = _WORD.match(_skip_leading(sql))
    return m.group(0).lower() if m else ""


def check_statement(sql: str) -> None:
    """Raise InvalidInput (one line naming what was refused) for a statement that could leave
    the tenant's context or its transaction."""
    if not sql.strip():
        raise InvalidInput("the SQL statement is empty")
    word = first_keyword(sql)
    kw = word.upper()
    if word in _TRANSACTION:
        raise InvalidInput(f"{kw} is refused: tenant query runs in a transaction of its own")
    if word in _OUTLIVE:
        raise InvalidInput(f"{kw} is refused: what it makes would outlive tenant query")
    if word in _SETTINGS:
        raise InvalidInput(f"{kw} is refused: tenant query cannot change settings")
    if word in _CODE:
        raise InvalidInput(f"{kw} is refused: it runs code that tenant query cannot check")
    found = _FUNCTIONS.search(sql)
    if found and found.group(1).lower() == "set_config":
        raise InvalidInput("set_config() is refused: tenant query cannot change its context")
    if found:
        raise InvalidInput(
            f"{found.group(1).lower()}() is refused: it runs SQL that tenant query cannot check"
        )
    if _SETTINGS_VIEW.search(sql):
        raise InvalidInput("pg_settings is refused: tenant query cannot change settings")
    if _UNICODE_ESCAPE.search(sql):
        raise InvalidInput("U& is refused: escaped names could hide what the statement calls")
