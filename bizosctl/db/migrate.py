"""Run the Alembic histories (``control`` and ``tenant``) inside a caller's transaction.

The script directory is loaded once per process and reused for every target; the caller owns
the connection and the transaction (PostgreSQL DDL is transactional, so a failed target rolls
back whole). ``migrations/*/env.py`` serves the plain ``alembic`` command line with the same
:func:`configure_target`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

History = Literal["control", "tenant"]


def script_location(history: History) -> Path:
    import migrations

    return Path(migrations.__file__).parent / history


@lru_cache(maxsize=2)
def _config_and_script(history: History) -> tuple[Config, ScriptDirectory]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location(history)))
    return cfg, ScriptDirectory.from_config(cfg)


def head(history: History) -> str:
    rev = _config_and_script(history)[1].get_current_head()
    assert rev is not None
    return rev


def known_revision(history: History, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _config_and_script(history)[1].get_revision(revision) is not None
    except CommandError:
        return False


def configure_target(conn: Connection, *, schema: str | None, owner_role: str | None) -> None:
    """Point the transaction at the target schema and role before migrating it."""
    from sqlalchemy import text

    if schema is not None:
        conn.execute(
            text("SELECT set_config('search_path', :p, true)"),
            {"p": f'"{schema}", public'},
        )
    if owner_role is not None:
        conn.execute(text(f'SET LOCAL ROLE "{owner_role}"'))


def current_revision(conn: Connection, *, schema: str | None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    return ctx.get_current_revision()


def upgrade(
    conn: Connection,
    history: History,
    *,
    schema: str | None = None,
    owner_role: str | None = None,
    revision: str = "head",
    **configure: Any,
) -> str | None:
    """Upgrade the target behind ``conn`` to ``revision`` in the current transaction.

    Returns the revision the target was at before.
    """
    from alembic.runtime.environment import EnvironmentContext
    from sqlalchemy import text

    cfg, script = _config_and_script(history)
    # One migration per target at a time, whoever runs it (bizosctl or plain alembic).
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"bizos-migrate:{history}:{schema or ''}"},
    )
    configure_target(conn, schema=schema, owner_role=owner_role)
    before: dict[str, str | None] = {}

    def fn(rev: Any, context: Any) -> Any:
        before["rev"] = rev[0] if rev else None
        return script._upgrade_revs(revision, rev)

    with EnvironmentContext(cfg, script, fn=fn, destination_rev=revision) as env:
        env.configure(
            connection=conn,
            version_table_schema=schema,
            transactional_ddl=True,
            **configure,
        )
        env.run_migrations()
    return before.get("rev")
