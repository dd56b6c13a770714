"""The embedded cluster manager: start, stop, password enforcement, bad directories and ports."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import drop_os_user
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bizosctl.db.embedded import EmbeddedCluster
from bizosctl.db.engines import get_engine
from bizosctl.errors import ConfigError, InvalidInput


@pytest.fixture
def base():
    d = Path(tempfile.mkdtemp(prefix="bze", dir="/tmp"))
    yield d
    for region in d.iterdir():
        EmbeddedCluster(region).stop(mode="immediate")
    drop_os_user(d)
    shutil.rmtree(d, ignore_errors=True)


def test_start_is_idempotent_and_stop_then_start_again(base):
    c = EmbeddedCluster(base / "r1", durable=False)
    assert c.ensure_running() is True
    assert c.ensure_running() is False
    with get_engine(c.url(), pooled=False).connect() as conn:
        assert conn.execute(text("show server_version_num")).scalar_one().startswith("18")
        assert conn.execute(text("show wal_level")).scalar_one() == "logical"
        conn.execute(text("create extension if not exists vector"))
    assert c.stop() is True
    assert c.is_running() is False
    assert c.stop() is False
    assert c.ensure_running() is True


def test_non_superuser_needs_password_superuser_is_trusted_on_socket(base):
    c = EmbeddedCluster(base / "r2", durable=False)
    c.ensure_running()
    with get_engine(c.url(), pooled=False).connect() as conn:
        conn.execute(text("create role someone login password 'right'"))
        conn.commit()
    from bizosctl.db.engines import make_url

    url = make_url(c.url()).set(username="someone", password="wrong")
    with pytest.raises(OperationalError, match="password authentication failed"):
        get_engine(url, pooled=False).connect()
    with get_engine(url.set(password="right"), pooled=False).connect() as conn:
        assert conn.execute(text("select current_user")).scalar_one() == "someone"


def test_data_directory_that_is_not_a_cluster(base):
    pgdata = base / "r3" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="is not empty and is not a PostgreSQL cluster"):
        EmbeddedCluster(base / "r3").ensure_running()
    assert (pgdata / "precious.txt").read_text() == "keep me"


def test_port_already_in_use(base):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"port {port} on 127.0.0.1 is already in use"):
            EmbeddedCluster(base / "r4", port=port, durable=False).ensure_running()


def test_data_directory_in_use_by_another_postgres(base):
    """A cluster started on a TCP port (another configuration) holds the data directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    EmbeddedCluster(base / "r5", port=port, durable=False).ensure_running()
    with pytest.raises(InvalidInput, match="is in use by another PostgreSQL"):
        EmbeddedCluster(base / "r5", durable=False).ensure_running()


def test_socket_path_too_long(base):
    deep = base / ("x" * 60) / ("y" * 40)
    with pytest.raises(ConfigError, match="too long for a Unix socket"):
        EmbeddedCluster(deep).ensure_running()


@pytest.mark.skipif(os.geteuid() != 0, reason="creates OS users: root only")
def test_os_user_creation_is_safe_across_processes(tmp_path):
    """Eight processes (like pytest-xdist workers on a fresh CI machine) need the same new OS
    user at once: every one gets it, with one uid, and passwd holds exactly one entry."""
    name = f"bzr{uuid.uuid4().hex[:10]}"
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from bizosctl.db.embedded import ensure_os_user\n"
        "deadline = time.monotonic() + 60\n"
        "while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < deadline:\n"
        "    pass\n"
        "print(ensure_os_user(sys.argv[1]).pw_uid)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, name, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        go.write_text("")
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, outs
        uids = {out.strip() for out, _ in outs}
        assert len(uids) == 1, outs
        assert pwd.getpwuid(int(uids.pop())).pw_name == name
        entries = [
            line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith(name)
        ]
        assert len(entries) == 1
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd refusal: root only")
def test_os_user_that_useradd_refuses_is_reported_clearly():
    from bizosctl.db.embedded import ensure_os_user
    from bizosctl.errors import OperationFailed

    with pytest.raises(OperationFailed, match=r"cannot create the OS user 'bad name!'.*useradd"):
        ensure_os_user("bad name!")


@pytest.mark.skipif(os.geteuid() != 0, reason="a separate cluster user exists only as root")
def test_parent_the_cluster_user_cannot_traverse_is_named_not_changed():
    """bizosctl used to add o+x to every parent silently; now it names the one to fix."""
    private = Path(tempfile.mkdtemp(prefix="bzp", dir="/tmp"))  # mode 0700
    home = private / "home"
    home.mkdir(mode=0o700)
    try:
        with pytest.raises(ConfigError) as err:
            EmbeddedCluster(home / "regions" / "r", home=home, durable=False).ensure_running()
        assert f"{private} is mode 0700. Allow traversal with `chmod o+x {private}`" in str(
            err.value
        )
        assert (private.stat().st_mode & 0o777) == 0o700
        assert not (home / "regions" / "r" / "pgdata").exists()
    finally:
        drop_os_user(home)
        shutil.rmtree(private, ignore_errors=True)


def test_tcp_cluster_restarts_at_once_on_its_port(base):
    """Stopping a server with TCP clients leaves its port in TIME_WAIT for about 60 s; that is
    no reason to refuse the restart (issue 12, item 10)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = EmbeddedCluster(base / "r7", port=port, durable=False)
    c.ensure_running()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for client in clients:  # a startup packet PostgreSQL rejects: the server closes first
        client.sendall(b"\x00\x00\x00\x08\x00\x00\x00\x00")
    for client in clients:  # read to the end: unread data would make close() send a reset
        while client.recv(4096):
            pass
    assert c.stop() is True
    for client in clients:
        client.close()
    assert c.ensure_running() is True
    with socket.create_connection(("127.0.0.1", port)):
        pass


def test_port_in_use_advice_does_not_suggest_moving_a_region(base):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidInput) as err:
            EmbeddedCluster(base / "r8", port=port, durable=False).ensure_running()
    assert err.value.message == (
        f"port {port} on 127.0.0.1 is already in use by another program: stop it and retry "
        "(the region's URLs use this port; choose another --port only for a new region)"
    )
