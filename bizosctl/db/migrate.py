"""Run the Alembic histories (``control`` and ``tenant``) inside a caller's transaction.

The script directory is loaded once per process and reused for every target; the caller owns
the connection and the transaction (PostgreSQL DDL is transactional, so a failed target rolls
back whole). ``migrations/*/env.py`` serves the plain ``alembic`` command line with the same
:func:`configure_target`.

``BIZOS_TENANT_MIGRATIONS_EXTRA`` adds directories (separated by ``:``) of revisions to the
tenant history (site migrations, and the test suite's and benchmarks' own revisions).

Every command checks the catalog's revision, and ``schema status`` names the tenant head, so
:func:`head` must not cost an Alembic import and a load of every revision module (about 0.4 s
of CPU per call, issue 12): :func:`fast_head` reads the ``revision``/``down_revision`` lines of
the revision files instead, and anything it cannot read with certainty falls back to Alembic.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bizosctl.errors import Busy, InvalidInput

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

History = Literal["control", "tenant"]
EXTRA_ENV = "BIZOS_TENANT_MIGRATIONS_EXTRA"


def script_location(history: History) -> Path:
    import migrations

    return Path(migrations.__file__).parent / history


def _extra(history: History) -> str | None:
    return os.environ.get(EXTRA_ENV) or None if history == "tenant" else None


def scripts(history: History) -> ScriptDirectory:
    return _config_and_script(history, _extra(history))[1]


@lru_cache(maxsize=8)
def _config_and_script(history: History, extra: str | None) -> tuple[Config, ScriptDirectory]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    location = script_location(history)
    cfg.set_main_option("script_location", str(location))
    if extra:
        dirs = [d for d in extra.split(os.pathsep) if d]
        for d in dirs:
            if not Path(d).is_dir():
                raise InvalidInput(f"{EXTRA_ENV}: {d} is not a directory")
        cfg.set_main_option("version_locations", " ".join([str(location / "versions"), *dirs]))
        cfg.set_main_option("path_separator", "space")
    return cfg, ScriptDirectory.from_config(cfg)


def version_dirs(history: History) -> list[Path]:
    """The directories Alembic reads revisions from (the history's own, then the extras)."""
    extra = _extra(history)
    return [
        script_location(history) / "versions",
        *(Path(d) for d in (extra or "").split(os.pathsep) if d),
    ]


# A revision file as our templates (and Alembic's typed ones) write it: one literal per line.
_REVISION = re.compile(r"""^revision(?:\s*:[^=\n]*)?\s*=\s*(?P<v>.*?)\s*(?:#.*)?$""", re.M)
_DOWN = re.compile(r"""^down_revision(?:\s*:[^=\n]*)?\s*=\s*(?P<v>.*?)\s*(?:#.*)?$""", re.M)
_ONE = re.compile(r"""^(?:"([^"\\]+)"|'([^'\\]+)')$""")
_MANY = re.compile(
    r"""^[(\[]\s*((?:(?:"[^"\\]+"|'[^'\\]+')\s*,\s*)*(?:"[^"\\]+"|'[^'\\]+')?)\s*,?\s*[)\]]$"""
)
# Alembic's own rule for which files in a versions directory are revisions.
_REV_FILE = re.compile(r"^(?!\.#|__init__)(.*\.py)$")


def _literals(value: str) -> list[str] | None:
    """The revision ids of a ``down_revision`` value; None if it is not plain literals."""
    if value == "None":
        return []
    one = _ONE.match(value)
    if one:
        return [one.group(1) or one.group(2)]
    many = _MANY.match(value)
    if many:
        return [a or b for a, b in re.findall(r""""([^"]+)"|'([^']+)'""", many.group(1))]
    return None


def _signature(dirs: list[Path]) -> tuple[tuple[str, int, int], ...] | None:
    out: list[tuple[str, int, int]] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return None
        for name in names:
            if _REV_FILE.match(name):
                st = (d / name).stat()
                out.append((str(d / name), st.st_mtime_ns, st.st_size))
    return tuple(out)


@lru_cache(maxsize=32)
def _scan_head(signature: tuple[tuple[str, int, int], ...]) -> str | None:
    scanned = _scan(signature)
    return None if scanned is None else scanned[0]


@lru_cache(maxsize=16)
def _scan(signature: tuple[tuple[str, int, int], ...]) -> tuple[str, frozenset[str]] | None:
    """(the head, every revision) from the files of ``signature``; None when unsure."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path, _mtime, _size in signature:
        text = Path(path).read_text(encoding="utf-8")
        rev = _REVISION.findall(text)
        down = _DOWN.findall(text)
        if len(rev) != 1 or len(down) != 1:
            return None
        one = _ONE.match(rev[0])
        parents = _literals(down[0])
        if one is None or parents is None:
            return None
        revision = one.group(1) or one.group(2)
        if revision in revisions:
            return None
        revisions.add(revision)
        downs.update(parents)
    heads = revisions - downs
    if len(heads) != 1 or not downs <= revisions:
        return None
    return heads.pop(), frozenset(revisions)


def fast_head(history: History) -> str | None:
    """The head revision read from the revision files without Alembic (cached per content
    signature: a file added, removed or changed gives a new answer); None when a file is not
    in the plain form (computed ids, multi-line tuples, several heads), then ask Alembic."""
    signature = _signature(version_dirs(history))
    return None if signature is None else _scan_head(signature)


def head(history: History) -> str:
    fast = fast_head(history)
    if fast is not None:
        return fast
    rev = scripts(history).get_current_head()
    assert rev is not None
    return rev


def resolve(history: History, revision: str) -> str:
    """A revision id for 'head' or a (partial) id; InvalidInput when unknown."""
    from alembic.util import CommandError

    if revision == "head":
        return head(history)
    try:
        found = scripts(history).get_revision(revision)
    except CommandError as exc:
        raise InvalidInput(f"unknown revision {revision!r}: {exc}") from exc
    if found is None:
        raise InvalidInput(f"unknown revision {revision!r}")
    return found.revision


def known_revision(history: History, revision: str) -> bool:
    signature = _signature(version_dirs(history))
    scanned = None if signature is None else _scan(signature)
    if scanned is not None and revision in scanned[1]:
        return True  # without Alembic (read-only commands stay light)
    try:
        resolve(history, revision)
    except InvalidInput:
        return False
    return True


def refuse_unknown_revisions(history: History, revisions: dict[str, int], *, doing: str) -> None:
    """InvalidInput when targets stand at revisions this code does not know: code older than
    the fleet must neither migrate it nor add targets at its own, older head.

    ``revisions`` maps each revision found to how many targets are at it."""
    unknown = {rev: n for rev, n in revisions.items() if not known_revision(history, rev)}
    if unknown:
        found = ", ".join(
            f"{rev} ({n} target{'s' if n != 1 else ''})" for rev, n in unknown.items()
        )
        raise InvalidInput(
            f"cannot {doing}: the fleet is at revision(s) {found} that this bizosctl does not "
            f"know (its head is {head(history)}); run the bizosctl release that has them (or "
            "add their directory to BIZOS_TENANT_MIGRATIONS_EXTRA)"
        )


@lru_cache(maxsize=256)
def _ancestors(extra: str | None, history: History, revision: str) -> frozenset[str]:
    script = _config_and_script(history, extra)[1]
    return frozenset(r.revision for r in script.walk_revisions(base="base", head=revision))


def direction(history: History, current: str | None, dest: str) -> str:
    """'none', 'upgrade' or 'downgrade' from ``current`` to ``dest``; InvalidInput if unrelated."""
    if current == dest:
        return "none"
    if current is None:
        return "upgrade"
    if not known_revision(history, current):
        raise InvalidInput(f"the target is at revision {current!r}, which this code does not know")
    if current in _ancestors(_extra(history), history, dest):
        return "upgrade"
    if dest in _ancestors(_extra(history), history, current):
        return "downgrade"
    raise InvalidInput(f"revisions {current} and {dest} are on different branches")


_PREPARE_SQL = (
    "SELECT set_config('search_path', COALESCE(:path, current_setting('search_path')), true),"
    " set_config('role', COALESCE(:role, current_setting('role')), true),"
    " set_config('lock_timeout', COALESCE(:lt, current_setting('lock_timeout')), true),"
    " to_regclass(:vt) IS NOT NULL"
)


def prepare_target(
    conn: Connection,
    *,
    schema: str | None,
    owner_role: str | None,
    lock_timeout_ms: int | None = None,
) -> str | None:
    """Point the transaction at the target (search_path, role, lock_timeout) in one round trip,
    then return the target's current revision (None for a new target)."""
    from sqlalchemy import text

    version_table = f'"{schema}".alembic_version' if schema else "alembic_version"
    exists = conn.execute(
        text(_PREPARE_SQL),
        {
            "path": f'"{schema}", public' if schema else None,
            "role": owner_role,
            "lt": f"{lock_timeout_ms}ms" if lock_timeout_ms is not None else None,
            "vt": version_table,
        },
    ).one()[3]
    if not exists:
        return None
    revisions = conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars().all()
    if len(revisions) > 1:
        raise InvalidInput(f"{version_table} holds several heads: {', '.join(revisions)}")
    return revisions[0] if revisions else None


def configure_target(conn: Connection, *, schema: str | None, owner_role: str | None) -> None:
    """Point the transaction at the target schema and role before migrating it."""
    prepare_target(conn, schema=schema, owner_role=owner_role)


def current_revision(conn: Connection, *, schema: str | None) -> str | None:
    """The target's revision (None: no version table or no row), without Alembic."""
    from sqlalchemy import text

    version_table = f'"{schema}".alembic_version' if schema else "alembic_version"
    if conn.execute(text("SELECT to_regclass(:vt)"), {"vt": version_table}).scalar() is None:
        return None
    revisions = conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars().all()
    if len(revisions) > 1:
        raise InvalidInput(f"{version_table} holds several heads: {', '.join(revisions)}")
    return revisions[0] if revisions else None


def lock_key(history: History, schema: str | None) -> str:
    return f"bizos-migrate:{history}:{schema or ''}"


def take_target_lock(conn: Connection, history: History, schema: str | None, *, wait: bool) -> bool:
    """The per-target advisory lock (per database, held to the end of the transaction)."""
    from sqlalchemy import text

    fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    got = conn.execute(
        text(f"SELECT {fn}(hashtextextended(:k, 0))::text"), {"k": lock_key(history, schema)}
    ).scalar_one()
    return wait or got == "true"


def lock_holder(conn: Connection, history: History, schema: str | None) -> str | None:
    """application_name of the session that holds the target's lock, if any."""
    from sqlalchemy import text

    return conn.execute(
        text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = "
            "hashtextextended(:k, 0) LIMIT 1"
        ),
        {"k": lock_key(history, schema)},
    ).scalar_one_or_none()


def migrate(
    conn: Connection,
    history: History,
    *,
    schema: str | None = None,
    owner_role: str | None = None,
    revision: str = "head",
    allow_downgrade: bool = False,
    wait: bool = True,
    lock_timeout_ms: int | None = None,
    **configure: Any,
) -> tuple[str | None, str]:
    """Move the target behind ``conn`` to ``revision`` in the current transaction.

    Takes the target's advisory lock first (``wait=False``: raise Busy when another session
    holds it), then applies ``lock_timeout_ms`` to the DDL's table locks. Returns (revision
    before, revision after).
    """
    from alembic.runtime.environment import EnvironmentContext

    cfg, script = _config_and_script(history, _extra(history))
    dest = resolve(history, revision)
    if not take_target_lock(conn, history, schema, wait=wait):
        holder = lock_holder(conn, history, schema)
        raise Busy(f"another migration holds this target ({holder or 'unknown session'})")
    # After the advisory lock: --wait may wait for it longer than lock_timeout allows tables.
    current = prepare_target(
        conn, schema=schema, owner_role=owner_role, lock_timeout_ms=lock_timeout_ms
    )
    way = direction(history, current, dest)
    if way == "none":
        return current, dest
    if way == "downgrade" and not allow_downgrade:
        raise InvalidInput(f"moving from {current} to {dest} is a downgrade")
    if way == "upgrade" and schema is not None and offline_safe(history, dest):
        # Pure DDL all the way: the same SQL `alembic upgrade --sql` emits, rendered once per
        # process for (current, dest) and sent in one round trip (see offline_safe). We hold
        # the target's lock and have just read its revision, so the rendering applies.
        conn.exec_driver_sql(
            upgrade_sql(history, current, dest).replace(PLACEHOLDER, schema),
            execution_options={"no_parameters": True},
        )
        return current, dest

    def fn(rev: Any, context: Any) -> Any:
        if way == "upgrade":
            return script._upgrade_revs(dest, rev)
        return script._downgrade_revs(dest, rev)

    with EnvironmentContext(cfg, script, fn=fn, destination_rev=dest) as env:
        env.configure(
            connection=conn,
            version_table_schema=schema,
            transactional_ddl=True,
            **configure,
        )
        env.run_migrations()
    return current, dest


def upgrade(
    conn: Connection,
    history: History,
    *,
    schema: str | None = None,
    owner_role: str | None = None,
    revision: str = "head",
) -> str | None:
    """Upgrade the target to ``revision`` (waiting for its lock). Returns the revision before."""
    return migrate(conn, history, schema=schema, owner_role=owner_role, revision=revision)[0]


def offline_sql(history: History, *, schema: str, start: str | None, dest: str) -> str:
    """The SQL that moving ``schema`` from ``start`` to ``dest`` runs (``alembic --sql``)."""
    import io

    from alembic.runtime.environment import EnvironmentContext

    cfg, script = _config_and_script(history, _extra(history))
    way = direction(history, start, dest)
    buf = io.StringIO()
    if way == "none":
        return ""

    def fn(rev: Any, context: Any) -> Any:
        if way == "upgrade":
            return script._upgrade_revs(dest, rev)
        return script._downgrade_revs(dest, rev)

    with EnvironmentContext(
        cfg, script, fn=fn, as_sql=True, starting_rev=start, destination_rev=dest
    ) as env:
        env.configure(
            url="postgresql+psycopg://",
            dialect_name="postgresql",
            as_sql=True,
            output_buffer=buf,
            version_table_schema=schema,
            transactional_ddl=False,
            literal_binds=True,
            # pyformat would double every '%' (PL/pgSQL RAISE uses them)
            dialect_opts={"paramstyle": "named"},
        )
        env.run_migrations()
    return buf.getvalue()


PLACEHOLDER = "bizos_target_schema_placeholder"


def offline_safe(history: History, dest: str) -> bool:
    """True when every revision up to ``dest`` declares ``offline_safe = True``: pure DDL whose
    offline rendering (``alembic --sql``) is exactly what it does online, whatever the target."""
    return _offline_safe(_extra(history), history, dest)


@lru_cache(maxsize=64)
def _offline_safe(extra: str | None, history: History, dest: str) -> bool:
    script = _config_and_script(history, extra)[1]
    return all(
        getattr(rev.module, "offline_safe", False)
        for rev in script.walk_revisions(base="base", head=dest)
    )


@lru_cache(maxsize=32)
def _upgrade_sql(extra: str | None, history: History, start: str | None, dest: str) -> str:
    return offline_sql(history, schema=PLACEHOLDER, start=start, dest=dest)


def upgrade_sql(history: History, start: str | None, dest: str) -> str:
    """The SQL that upgrades a target from ``start`` (None: empty) to ``dest``, for a
    placeholder schema name."""
    return _upgrade_sql(_extra(history), history, start, dest)


def fresh_sql(history: History, dest: str) -> str:
    """The SQL that builds an empty target up to ``dest``, for a placeholder schema name."""
    return upgrade_sql(history, None, dest)
