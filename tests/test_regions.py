"""region add/list/show, including servers we do not run ourselves."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from bizosctl.db.embedded import EmbeddedCluster
from bizosctl.db.engines import get_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_region_list_json_contract(cli):
    r = cli("region", "list", "--json")
    assert r.exit_code == 0
    regions = {reg["name"]: reg for reg in json.loads(r.stdout)["regions"]}
    assert {"global", "id"} <= set(regions)
    server = regions["id"]["servers"][0]
    assert set(server) == {"name", "provider", "url"}
    assert server["provider"] == "embedded" and server["name"] == "id-1"


def test_region_show_unknown_exits_3(cli):
    r = cli("region", "show", "atlantis")
    assert r.exit_code == 3
    assert "no region named 'atlantis'" in r.stderr


@pytest.mark.parametrize("name", ["X", "a", "eu_west", "9eu", "e" * 31])
def test_region_add_rejects_bad_name(cli, name):
    r = cli("region", "add", name)
    assert r.exit_code == 2
    assert f"invalid region name {name!r}" in r.stderr


def test_region_add_existing_is_refused(cli):
    r = cli("region", "add", "id")
    assert r.exit_code == 2
    assert "region 'id' already exists" in r.stderr


def test_region_add_unreachable_url(cli):
    port = free_port()
    r = cli(
        "region", "add", "nowhere", "--url", f"postgresql://admin:s3cret@127.0.0.1:{port}/postgres"
    )
    assert r.exit_code == 2
    assert f"cannot connect to postgresql://admin@127.0.0.1:{port}/postgres" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout


def test_region_add_not_a_url(cli):
    r = cli("region", "add", "weird", "--url", "mysql://x@y/z")
    assert r.exit_code == 2
    assert "only postgresql:// URLs are supported" in r.stderr


def test_region_add_port_out_of_range(cli):
    r = cli("region", "add", "porty", "--port", "80")
    assert r.exit_code == 2
    assert "port 80 is out of range" in r.stderr


def _pg15_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _pg15_up(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_region_add_server_without_pgvector_names_the_fix(cli):
    """The machine's PostgreSQL 15 has no pgvector: refused, with the fix in the message."""
    from sqlalchemy.exc import OperationalError

    try:
        with get_engine(
            "postgresql://postgres@127.0.0.1:5432/postgres", pooled=False
        ).connect() as c:
            has_vector = c.execute(
                text("select count(*) from pg_available_extensions where name = 'vector'")
            ).scalar_one()
    except OperationalError:
        pytest.skip("PostgreSQL on 5432 does not accept postgres without a password")
    if has_vector:
        pytest.skip("this PostgreSQL 15 has pgvector")
    r = cli("region", "add", "byo15", "--url", "postgresql://postgres@127.0.0.1:5432/postgres")
    assert r.exit_code == 2
    assert "cannot create the 'vector' extension: install pgvector" in r.stderr


@pytest.fixture
def tcp_cluster():
    """A PostgreSQL that bizosctl does not manage, on a TCP port, with a password-only superuser."""
    base = Path(tempfile.mkdtemp(prefix="bzx", dir="/tmp"))
    port = free_port()
    cluster = EmbeddedCluster(base / "byo", port=port, durable=False)
    cluster.ensure_running()
    with get_engine(cluster.url("postgres"), pooled=False).connect() as c:
        c.execute(text("create role byo_admin login superuser password 'byo-pass-123'"))
        c.commit()
    yield port
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_region_add_wrong_credentials(cli, tcp_cluster):
    r = cli(
        "region",
        "add",
        "byowrong",
        "--url",
        f"postgresql://byo_admin:not-it@127.0.0.1:{tcp_cluster}/postgres",
    )
    assert r.exit_code == 2
    assert 'password authentication failed for user "byo_admin"' in r.stderr
    assert "not-it" not in r.stderr


def test_region_add_byo_server_then_isolated_tenant(fresh_home, cli, tcp_cluster):
    assert cli("init").exit_code == 0
    url = f"postgresql://byo_admin:byo-pass-123@127.0.0.1:{tcp_cluster}/postgres"
    r = cli("region", "add", "byo", "--url", url, "--json")
    assert r.exit_code == 0, r.stderr
    server = json.loads(r.stdout)["servers"][0]
    assert server["provider"] == "postgres"
    assert "byo-pass-123" not in r.stdout and "byo_admin@127.0.0.1" in server["url"]
    listed = cli("region", "list", "--json").stdout
    assert "byo-pass-123" not in listed
    r = cli(
        "tenant",
        "create",
        "byo-tenant",
        "--name",
        "BYO",
        "--region",
        "byo",
        "--tier",
        "isolated",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    r = cli("tenant", "query", "byo-tenant", "select count(*) from settings", "--json")
    assert json.loads(r.stdout)["rows"] == [[1]]
