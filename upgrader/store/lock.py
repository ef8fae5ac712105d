"""The per-host lock: an exclusive, non-blocking flock on <root>/<host>/.lock that names its holder.

The holder's record ({pid, hostname, since, argv}) is written right after the flock is taken and
cleared (the file truncated) on release. A process killed (SIGKILL, SIGHUP, the OOM killer) leaves
its record behind while the OS frees the flock: `holder()` reads it, `LockHolder.alive` tells the
two apart without taking the lock (a probe must never make a real `resume` fail as locked)."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from upgrader.errors import LockedError
from upgrader.clock import utcnow
from upgrader.store.files import secure_open, writing
from upgrader.store.journal import parse_line


class HostLock:
    """Exclusive, non-blocking flock on <root>/<host>/.lock. The OS frees it if the process dies."""

    def __init__(self, host: str, path: Path, prepare: Callable[[], None], *, what: str | None = None) -> None:
        self.host = host
        self.what = what or f'host "{host}"'  # how messages name what is locked
        self.path = path
        self._prepare = prepare
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this HostLock")
        self._prepare()
        with writing(self.path.parent):
            fd = secure_open(self.path, os.O_RDWR | os.O_CREAT)
            try:
                self._take(fd)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd

    def _take(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise self._locked_error(fd) from None
        info = {
            "pid": os.getpid(),
            "hostname": os.uname().nodename,
            "since": utcnow().isoformat(timespec="seconds"),
            "argv": list(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
        os.fsync(fd)

    def _locked_error(self, fd: int) -> LockedError:
        info = None
        for _ in range(50):  # the holder writes its name right after it got the lock: give it a moment
            size = os.fstat(fd).st_size
            info = parse_line(os.pread(fd, min(size, 65536), 0).strip()) if size else None
            if info is not None and "pid" in info:
                break
            time.sleep(0.01)
        if info is None or "pid" not in info:
            return LockedError(f'{self.what} is locked by another process (holder not recorded yet)')
        holder = f'pid {info["pid"]} on {info.get("hostname", "?")} since {info.get("since", "?")}'
        argv = info.get("argv")
        hint = LockedError.default_hint
        if isinstance(argv, list) and argv:
            hint = f"holder runs: {' '.join(str(a) for a in argv)}; {hint}"
        return LockedError(f'{self.what} is locked by {holder}', hint=hint)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # clear the holder info while still holding the lock
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held, if it died) a lock: what the holder wrote into the lock file."""

    pid: int
    hostname: str
    since: dt.datetime | None
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    @property
    def alive(self) -> bool | None:
        """True: that process runs; False: it is gone (killed: it could not clear the file);
        None: cannot tell (the holder ran on another machine sharing the state dir)."""
        if self.hostname != os.uname().nodename:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # runs, as another user
            pass
        return not self._pid_reused()

    def _pid_reused(self) -> bool:
        """The pid is another process now: one started after the holder took the lock."""
        started = _process_start(self.pid)
        return started is not None and self.since is not None and started > self.since + dt.timedelta(seconds=2)


def holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None if nobody holds it (released cleanly, or never
    taken) or the record is unreadable (a holder that is just writing it: taken as alive by callers
    that see an unfinished run)."""
    try:
        data = path.read_bytes()[:65536].strip()
    except OSError:
        return None
    info = parse_line(data) if data else None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    since = None
    try:
        since = dt.datetime.fromisoformat(str(info.get("since")))
    except ValueError:
        pass
    argv = info.get("argv")
    return LockHolder(pid=info["pid"], hostname=str(info.get("hostname", "")), since=since,
                      argv=tuple(str(a) for a in argv) if isinstance(argv, list) else ())


def _process_start(pid: int) -> dt.datetime | None:
    """When process `pid` started (Linux /proc), None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), dt.timezone.utc)
