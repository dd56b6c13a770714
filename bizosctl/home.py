"""The home (``BIZOS_HOME``) is trusted only when nobody else can change it.

A home pre-created by another user, or with a writable parent, lets that user plant symlinks
(``master.key`` to their own key, ``.lock`` to a file root then truncates) or swap files
between a check and a read. So: the home and its parents must be owned by us (or root) and
not writable by others (a sticky directory such as /tmp is fine); key and config files are
opened once with ``O_NOFOLLOW`` and their owner and mode are checked on the open descriptor;
files are created with ``O_EXCL|O_NOFOLLOW`` and mode 0600.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
from pathlib import Path

from bizosctl.errors import ConfigError

#: Written by ``init``: which region's server holds this home's catalog.
HOME_REGION_MARKER = ".home-region"


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_parent(directory: Path, st: os.stat_result, home: Path) -> None:
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        raise ConfigError(
            f"BIZOS_HOME {home} is refused: its parent {directory} belongs to "
            f"{_owner(st.st_uid)}, who could replace the home; choose a home under a "
            "directory owned by you or root"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"BIZOS_HOME {home} is refused: its parent {directory} is writable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod go-w {directory} or choose "
            "another home"
        )


def check_home(home: Path, *, create: bool = False) -> None:
    """Refuse a home that someone else could change; with ``create``, make it (mode 0700).

    A home that does not exist yet is fine without ``create`` (commands then say "run init").
    """
    home = Path(os.path.abspath(home))
    try:
        st = os.stat(home)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except PermissionError as exc:
        raise ConfigError(
            f"BIZOS_HOME {home} cannot be checked ({exc.strerror}): set BIZOS_HOME to a "
            "directory you can reach"
        ) from exc
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"BIZOS_HOME {home} is not a directory: point BIZOS_HOME at a directory")
    real = Path(os.path.realpath(home))
    # The parents, nearest existing one first: each could rename the home away.
    for parent in real.parents if st is not None else [real, *real.parents]:
        try:
            pst = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            raise ConfigError(
                f"BIZOS_HOME {home} cannot be checked ({parent}: {exc.strerror}): set "
                "BIZOS_HOME to a directory you can reach"
            ) from exc
        if not stat.S_ISDIR(pst.st_mode):
            raise ConfigError(
                f"BIZOS_HOME {home} is not writable ({parent} is not a directory): set "
                "BIZOS_HOME to a directory you can write to"
            )
        _check_parent(parent, pst, home)
    if st is None:
        if not create:
            return
        try:
            home.parent.mkdir(parents=True, exist_ok=True)
            home.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"BIZOS_HOME {home} is not writable ({exc.strerror}): set BIZOS_HOME to a "
                "directory you can write to"
            ) from exc
        st = os.stat(home)
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"BIZOS_HOME {home} is refused: it belongs to {_owner(st.st_uid)}, not to you "
            f"({_owner(os.geteuid())}); use a home of your own, or chown it if it is yours"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"BIZOS_HOME {home} is refused: it is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run chmod go-w {home}"
        )


def check_writable(home: Path) -> None:
    """Write and remove a probe file with a fresh name (never through a planted symlink)."""
    probe = home / f".write-probe-{secrets.token_hex(8)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"BIZOS_HOME {home} is not writable ({exc.strerror}): set BIZOS_HOME to a "
            "directory you can write to"
        ) from exc


def open_private(path: Path, *, what: str) -> int:
    """Open ``path`` for reading without following a symlink; check it on the descriptor.

    It must be a regular file owned by us (or root) and writable by nobody else (who may
    read it is the caller's check, on :func:`file_mode`). Returns the open descriptor.
    Raises FileNotFoundError when it does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            raise
        if os.path.islink(path):
            raise ConfigError(
                f"{what} {path} is a symlink: refused (a symlink can point at someone else's "
                "file); replace it with the file itself"
            ) from exc
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file: refused")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"{what} {path} is refused: it belongs to {_owner(st.st_uid)}, not to you"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            raise ConfigError(
                f"{what} {path} is refused: writable by others (mode {mode:04o}); "
                f"run chmod go-w {path}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_mode(fd: int) -> int:
    return stat.S_IMODE(os.fstat(fd).st_mode)


def read_fd(fd: int) -> bytes:
    """Read a whole file from its descriptor, then close it."""
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 and write ``data``; False when something exists there
    (a file or a symlink: never followed)."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return True


def recorded_home_region(home: Path) -> str | None:
    """The home region ``init`` recorded, or None (older homes, not initialised)."""
    try:
        fd = open_private(home / HOME_REGION_MARKER, what="home region marker")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return read_fd(fd).decode(errors="replace").strip() or None


def initialised_regions(regions_dir: Path) -> list[str]:
    """Regions of this home that have an embedded cluster on disk."""
    try:
        return sorted(
            d.name for d in regions_dir.iterdir() if (d / "pgdata" / "PG_VERSION").exists()
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_home_region(home: Path, regions_dir: Path, home_region: str) -> None:
    """Refuse a ``home_region`` that does not match the catalog already in this home.

    A typo would otherwise make ``init`` create a second, empty catalog beside the real one.
    """
    if (regions_dir / home_region / "pgdata" / "PG_VERSION").exists():
        return
    recorded = recorded_home_region(home)
    if recorded is not None and recorded != home_region:
        raise ConfigError(
            f"home_region is {home_region!r} but the catalog of {home} is on region "
            f"{recorded!r}: set home_region = {recorded!r} (config file or BIZOS_HOME_REGION)"
        )
    found = initialised_regions(regions_dir)
    if recorded is None and found:
        raise ConfigError(
            f"home_region is {home_region!r} but {home} already has servers for "
            f"{', '.join(repr(f) for f in found)}: set home_region (config file or "
            "BIZOS_HOME_REGION) to the region you initialised, by default 'global'"
        )
