"""region add/list/show, including servers we do not run ourselves."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from conftest import drop_os_user
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
        "region",
        "add",
        "nowhere",
        "--url",
        f"postgresql://admin@127.0.0.1:{port}/postgres",
        env={"BIZOS_SERVER_PASSWORD": "s3cret"},
    )
    assert r.exit_code == 2
    assert f"cannot connect to postgresql://admin@127.0.0.1:{port}/postgres" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout


def test_region_add_refuses_a_password_in_the_url(cli):
    r = cli("region", "add", "inurl", "--url", "postgresql://admin:s3cret@db.example/postgres")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: --url holds a password, which other users of this machine see in the process "
        "list: pass it with --password-file, --password-stdin or BIZOS_SERVER_PASSWORD "
        "(or --allow-url-password)\n"
    )


@pytest.mark.parametrize(
    "param", ["sslmode=prefer", "require_auth=password", "channel_binding=disable"]
)
def test_region_add_refuses_a_downgrade_in_the_url_without_insecure(cli, param):
    r = cli("region", "add", "weak", "--url", f"postgresql://admin@db.example/postgres?{param}")
    assert r.exit_code == 2
    assert f"--url asks for {param}, which lets a server or relay downgrade" in r.stderr


class FakeServer:
    """A PostgreSQL impostor on 127.0.0.1: refuses TLS, then asks for a cleartext password
    and records every byte the client sends."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    while True:
                        head = conn.recv(8)
                        self.received += head
                        if len(head) < 8:
                            break
                        length, code = struct.unpack("!ii", head)
                        if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                            conn.sendall(b"N")
                            continue
                        self.received += conn.recv(length - 8)
                        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext, please
                        while chunk := conn.recv(4096):
                            self.received += chunk
                        break
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("insecure", [True, False])
def test_fake_server_asking_for_cleartext_gets_no_password(cli, tmp_path, insecure):
    fake = FakeServer()
    pw = tmp_path / "pw"
    pw.write_text("superuser-secret-h4\n")
    try:
        r = cli(
            "region",
            "add",
            "fake",
            "--url",
            f"postgresql://admin@127.0.0.1:{fake.port}/postgres",
            "--password-file",
            str(pw),
            *(["--insecure"] if insecure else []),
        )
    finally:
        fake.close()
    assert r.exit_code == 2
    assert "cannot connect to" in r.stderr
    assert b"admin" in fake.received or not insecure  # the impostor was really talked to
    assert b"superuser-secret-h4" not in fake.received
    assert "superuser-secret-h4" not in r.stdout + r.stderr


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
    r = cli(
        "region",
        "add",
        "byo15",
        "--url",
        "postgresql://postgres@127.0.0.1:5432/postgres?require_auth=none",
        "--insecure",
    )
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
    drop_os_user(base)
    shutil.rmtree(base, ignore_errors=True)


def test_region_add_wrong_credentials(cli, tcp_cluster):
    r = cli(
        "region",
        "add",
        "byowrong",
        "--url",
        f"postgresql://byo_admin@127.0.0.1:{tcp_cluster}/postgres",
        "--insecure",
        env={"BIZOS_SERVER_PASSWORD": "not-it"},
    )
    assert r.exit_code == 2
    assert 'password authentication failed for user "byo_admin"' in r.stderr
    assert "not-it" not in r.stderr


def test_region_add_byo_without_tls_needs_insecure(cli, tcp_cluster, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("byo-pass-123\n")
    url = f"postgresql://byo_admin@127.0.0.1:{tcp_cluster}/postgres"
    r = cli("region", "add", "byotls", "--url", url, "--password-file", str(pw))
    assert r.exit_code == 2
    assert "bizosctl requires TLS with a verified certificate; --insecure for a lab" in r.stderr
    assert "byo-pass-123" not in r.stderr


def test_region_add_byo_server_then_isolated_tenant(fresh_home, cli, tcp_cluster, tmp_path):
    assert cli("init").exit_code == 0
    pw = tmp_path / "pw"
    pw.write_text("byo-pass-123\n")
    url = f"postgresql://byo_admin@127.0.0.1:{tcp_cluster}/postgres"
    r = cli(
        "region", "add", "byo", "--url", url, "--password-file", str(pw), "--insecure", "--json"
    )
    assert r.exit_code == 0, r.stderr
    server = json.loads(r.stdout)["servers"][0]
    assert server["provider"] == "postgres"
    assert "byo-pass-123" not in r.stdout and "byo_admin@127.0.0.1" in server["url"]
    assert "require_auth=scram-sha-256" in server["url"]
    r = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["tls byo-1"]["ok"] is False
    assert "not encrypted" in checks["tls byo-1"]["detail"]
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


def test_region_add_reads_the_password_from_stdin(fleet, tcp_cluster):
    """A wrong password read from stdin reaches the server (over SCRAM): it was read."""
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bizosctl",
            "region",
            "add",
            "byostdin",
            "--url",
            f"postgresql://byo_admin@127.0.0.1:{tcp_cluster}/postgres",
            "--password-stdin",
            "--insecure",
        ],
        input="stdin-wrong-pw\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert r.returncode == 2
    assert 'password authentication failed for user "byo_admin"' in r.stderr
    assert "stdin-wrong-pw" not in r.stdout + r.stderr


def test_the_same_server_cannot_join_a_second_region(fresh_home, cli, tcp_cluster, tmp_path):
    """Registering a server twice used to re-bootstrap it: the first region's shared login
    role got a new password and its tenants were locked out. Now the second registration is
    refused (dry run too), naming the region that has it, and the first keeps working."""
    assert cli("init").exit_code == 0
    pw = tmp_path / "pw"
    pw.write_text("byo-pass-123\n")
    url = f"postgresql://byo_admin@127.0.0.1:{tcp_cluster}/postgres"
    add = ("--url", url, "--password-file", str(pw), "--insecure")
    assert cli("region", "add", "byo", *add).exit_code == 0
    r = cli("tenant", "create", "byo-shared", "--name", "S", "--region", "byo", "--tier", "shared")
    assert r.exit_code == 0, r.output
    for extra in (("--dry-run",), ()):
        r = cli("region", "add", "byo-again", *add, *extra)
        assert r.exit_code == 2, r.output
        assert "already registered as byo-1 in region 'byo'" in r.stderr
    assert cli("region", "show", "byo-again").exit_code != 0
    r = cli("tenant", "query", "byo-shared", "select count(*) from settings", "--json")
    assert r.exit_code == 0, r.output  # the shared role's password was not reset
    # A registration made before this check (by hand here) is what doctor reports.
    from bizosctl.catalog.control import get_control
    from bizosctl.catalog.models import Region, Server

    ctl = get_control()
    with ctl.catalog() as s:
        row = s.get(Server, "byo-1")
        s.add(Region(name="twin"))
        s.flush()
        s.add(
            Server(
                name="twin-1",
                region="twin",
                provider="postgres",
                url_enc=ctl.seal(ctl.server("byo-1").url, context="server:twin-1:url"),
                app_password_enc=row.app_password_enc,
                app_role=row.app_role,
            )
        )
    checks = {c["name"]: c for c in json.loads(cli("doctor", "--json").stdout)["checks"]}
    assert not checks["server identity"]["ok"]
    detail = checks["server identity"]["detail"]
    assert "registered as byo-1 (region byo), twin-1 (region twin)" in detail


def test_region_add_on_a_port_in_use_makes_nothing_and_dry_run_says_so(fresh_home, cli):
    """A port another program listens on: the dry run refuses as the real run does, and the
    real run leaves no data directory behind."""
    import socket

    assert cli("init").exit_code == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra in (("--dry-run",), ()):
            r = cli("region", "add", "busy", "--port", str(port), *extra)
            assert r.exit_code == 2, r.output
            assert f"port {port} on 127.0.0.1 is already in use" in r.stderr
            assert "choose another --port" in r.stderr
        assert not (fresh_home / "regions" / "busy").exists()
    r = cli("region", "add", "busy", "--port", "80", "--dry-run")
    assert r.exit_code == 2 and "out of range" in r.stderr
