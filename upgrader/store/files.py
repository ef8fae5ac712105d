"""Private files and directories: never through a symlink, never in a directory others can write.

Every state file is opened with `secure_open` (O_NOFOLLOW, regular files only, 0600) inside a
directory `check_dir` accepted (a real directory, ours, not group/world-writable). An OSError that
means "this directory cannot be written" (read-only, full, quota, permission) becomes
StateUnwritable (exit 4) through `writing(DIR)`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from upgrader.errors import StateUnwritable, UnsafeState

FILE_MODE = 0o600
DIR_MODE = 0o700
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_UNWRITABLE = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "free space or raise the quota on that filesystem",
    errno.EROFS: "remount that filesystem read-write, or point --state-dir (UPGRADER_STATE_DIR) elsewhere",
    errno.EACCES: "run as the directory's owner, or give it back to this user (`chown`, `chmod 700`)",
    errno.EPERM: "run as the directory's owner, or give it back to this user (`chown`, `chmod 700`)",
}


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a regular file"


def check_dir(path: Path) -> bool:
    """True if `path` is a safe state directory, False if it does not exist; UnsafeState if it is a
    symlink, not a directory, not owned by this user, or writable by group or others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeState(
            f"state directory {path} is a symbolic link; upgrader never follows links in its state",
            hint=f"use the real directory (`readlink -f {path}`) as --state-dir, or replace the link by a directory",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeState(f"{path} is {_kind(st.st_mode)}, not a directory",
                          hint=f"move {path} aside: upgrader keeps a directory there")
    if st.st_uid != os.geteuid():
        raise UnsafeState(
            f"state directory {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})",
            hint=f"run upgrader as its owner, or `chown -R {os.geteuid()} {path}` if it is really yours",
        )
    if st.st_mode & 0o022:
        raise UnsafeState(
            f"state directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"`chmod 700 {path}` (check first that nobody planted files or links in it)",
        )
    return True


def secure_open(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """os.open without following a symlink, regular files only; a file opened for writing is made
    `mode` (0600). Returns the fd (O_CLOEXEC). FileNotFoundError and other OSErrors pass through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeState(
                f"{path} is a symbolic link; upgrader never follows links in its state",
                hint=f"remove the link (someone may have tried to redirect upgrader's writes): `rm {path}`",
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeState(f"{path} is {_kind(st.st_mode)}, not a regular file",
                              hint=f"move {path} aside: upgrader keeps a plain file there")
        if flags & _WRITE_FLAGS and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path) -> bytes:
    fd = secure_open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def touch_private(path: Path) -> None:
    """Create `path` 0600 if missing (never through a symlink) and fsync it; the directory must
    exist. E.g. the `abort-requested` flag file."""
    with writing(path.parent):
        fd = secure_open(path, os.O_WRONLY | os.O_CREAT)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unwritable(directory: Path, error: OSError) -> StateUnwritable | None:
    """The typed error for an OSError that means `directory` cannot be written, else None."""
    if error.errno not in _UNWRITABLE:
        return None
    return StateUnwritable(
        f"cannot write {directory}: {error.strerror or os.strerror(error.errno)}",
        hint=f"{_UNWRITABLE[error.errno]}; then run the command again (`upgrader resume HOST` continues a run)",
    )


@contextmanager
def writing(directory: Path) -> Iterator[None]:
    """Turn 'cannot write here' OSErrors raised inside into StateUnwritable naming `directory`."""
    try:
        yield
    except OSError as e:
        typed = unwritable(directory, e)
        if typed is None:
            raise
        raise typed from e
