"""The per-host lock: an exclusive, non-blocking flock on <root>/<host>/.lock that names its holder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
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
