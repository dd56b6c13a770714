"""Start-up cost: the revision heads are known without Alembic, and read-only commands do not
import it (issue 12, item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bizosctl.catalog.control import Control
from bizosctl.db import migrate

TESTS = Path(__file__).parent
BENCH = TESTS.parent / "benchmarks" / "migrations"


def _alembic_head(history: migrate.History) -> str:
    """Alembic's own answer, from a fresh ScriptDirectory (not the process cache)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    location = migrate.script_location(history)
    cfg.set_main_option("script_location", str(location))
    extra = os.environ.get(migrate.EXTRA_ENV) if history == "tenant" else None
    if extra:
        dirs = [d for d in extra.split(os.pathsep) if d]
        cfg.set_main_option("version_locations", " ".join([str(location / "versions"), *dirs]))
        cfg.set_main_option("path_separator", "space")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


@pytest.mark.parametrize(
    ("history", "extra"),
    [
        ("control", None),
        ("tenant", None),
        ("tenant", [TESTS / "migrations" / "add_column"]),
        ("tenant", [TESTS / "migrations" / "add_column", TESTS / "migrations" / "failing"]),
        ("tenant", [BENCH]),
    ],
)
def test_fast_head_equals_alembic_head(
    history: migrate.History, extra: list[Path] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if extra:
        monkeypatch.setenv(migrate.EXTRA_ENV, os.pathsep.join(map(str, extra)))
    assert migrate.fast_head(history) == _alembic_head(history)
    assert migrate.head(history) == _alembic_head(history)


REV = '''"""{doc}"""

from __future__ import annotations

revision{ann} = {rev!r}
down_revision{ann} = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def _write(d: Path, rev: str, down: str, *, ann: str = "") -> None:
    (d / f"{rev}_step.py").write_text(REV.format(doc=rev, rev=rev, down=down, ann=ann))


def test_adding_a_revision_file_changes_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(migrate.EXTRA_ENV, str(tmp_path))
    _write(tmp_path, "x002", '"0007"')  # on the tenant history's head
    assert migrate.fast_head("tenant") == "x002" == _alembic_head("tenant")
    _write(tmp_path, "x003", "'x002'", ann=": str | None")  # the typed template's form
    assert migrate.fast_head("tenant") == "x003" == _alembic_head("tenant")
    # A merge of two branches: tuple down_revision.
    _write(tmp_path, "x004", '"0007"')
    _write(tmp_path, "x005", '("x003", "x004")')
    assert migrate.fast_head("tenant") == "x005" == _alembic_head("tenant")


def test_a_revision_file_the_scan_cannot_read_falls_back_to_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(migrate.EXTRA_ENV, str(tmp_path))
    (tmp_path / "x002_odd.py").write_text(
        'PREV = "0007"\nrevision = "x" + "002"\ndown_revision = PREV\n'
        "def upgrade():\n    pass\n\ndef downgrade():\n    pass\n"
    )
    assert migrate.fast_head("tenant") is None
    assert migrate.head("tenant") == "x002" == _alembic_head("tenant")


#: ``python -c`` this, argv = watched names (comma separated), then bizosctl's arguments: runs
#: the command in that process, then writes on stderr ``LOADED=`` and the loaded modules whose
#: package (first component) or full name is watched.
RUN_WATCHING = (
    "import sys\n"
    "from bizosctl.cli.main import app\n"
    "watch = sys.argv[1].split(',')\n"
    "try:\n"
    "    app(sys.argv[2:])\n"
    "except SystemExit as e:\n"
    "    assert not e.code, e.code\n"
    "found = sorted(m for m in sys.modules if m in watch or m.split('.')[0] in watch)\n"
    "sys.stderr.write('LOADED=' + ','.join(found) + '\\n')\n"
)


def run_watching(args: list[str], watch: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run ``bizosctl args`` in a child process; assert it exited 0 and loaded no module of
    ``watch``."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_WATCHING, ",".join(watch), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (args, done.stderr)
    assert "LOADED=\n" in done.stderr, (args, done.stderr[-500:])
    return done


def test_read_only_commands_import_neither_alembic_nor_the_tenant_models(
    fleet: Control, make_tenant
) -> None:  # type: ignore[no-untyped-def]
    slug = make_tenant(tier="schema")
    for args in (
        ["tenant", "list", "--json"],
        ["tenant", "show", slug, "--json"],
        ["schema", "status", "--json"],
    ):
        run_watching(args, ("alembic", "mako", "tenant_schema.models"))


def test_read_only_commands_do_not_import_sqlalchemy(small_fleet: Path) -> None:
    """tenant list, tenant show (row counts through RLS: the keyring, a tenant's login) and
    schema status read with plain psycopg: neither SQLAlchemy nor the ORM models load, in a
    home of the test's own (a key due for retirement elsewhere would load them: the keyring
    is then loaded through a session, which retires it)."""
    import json

    runs = [
        ["tenant", "list", "--json"],
        ["tenant", "list", "--region", "id", "--json"],
        *(["tenant", "show", slug, "--json"] for slug in ("alpha", "boom-co", "gamma", "delta")),
        ["schema", "status", "--json"],
        ["schema", "status", "--region", "id", "--json"],
    ]
    for args in runs:
        doc = json.loads(run_watching(args, ("sqlalchemy", "bizosctl.catalog.models")).stdout)
        if args[:2] == ["tenant", "list"]:
            expect = (
                ["boom-co", "gamma"] if "id" in args else ["alpha", "boom-co", "delta", "gamma"]
            )
            assert [t["slug"] for t in doc["tenants"]] == expect
        elif args[:2] == ["tenant", "show"]:
            assert doc["slug"] == args[2]
            assert doc["row_counts"]["tenant_state"] == 1  # counted in the tenant's context
        else:
            assert doc["targets"] and doc["unknown_revisions"] == []
            assert all(t["revision"] == doc["head"] for t in doc["targets"])


def test_a_read_command_upgrades_a_catalog_behind_head(initialised_home: Path) -> None:
    """The plain-psycopg reads check the catalog's revision as the engine does: a catalog one
    revision behind this code is upgraded by `tenant list` before it reads."""
    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import dispose_all
    from bizosctl.db.migrate import current_revision, head, migrate

    ctl = get_control()
    previous = f"{int(head('control')) - 1:04d}"
    with ctl.catalog_engine.begin() as conn:
        migrate(conn, "control", revision=previous, allow_downgrade=True)
    with ctl.catalog_engine.connect() as conn:
        assert current_revision(conn, schema=None) == previous
    dispose_all(host_contains=str(initialised_home))
    done = subprocess.run(
        [sys.executable, "-m", "bizosctl", "tenant", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"tenants": []' in done.stdout
    with ctl.catalog_engine.connect() as conn:
        assert current_revision(conn, schema=None) == head("control")


def test_table_names_match_the_models() -> None:
    from tenant_schema import TABLE_NAMES, TENANT_TABLES

    assert sorted(TABLE_NAMES) == sorted(TENANT_TABLES)
    assert len(set(TABLE_NAMES)) == len(TABLE_NAMES)
