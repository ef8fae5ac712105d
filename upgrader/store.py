"""Run state on disk: run.json (atomic replace), journal.jsonl (append + fsync), a per-host lock.

Layout under `root` (default `state/`)::

    <root>/<host>/.lock                      flock; holds the holder's {pid, hostname, since, argv}
    <root>/<host>/<run-id>/run.json          the RunRecord, replaced atomically
    <root>/<host>/<run-id>/journal.jsonl     one JSON object per line, fsynced per append
    <root>/<host>/<run-id>/debug.log         written by others

Files are 0600 and directories 0700, set explicitly whatever the umask.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from pydantic import ValidationError

from upgrader.errors import InputError, LockedError, NoRun, StateCorrupt
from upgrader.record import RunRecord, utcnow

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"
_TMP_PREFIX = f".{RUN_FILE}."
_FILE_MODE = 0o600
_DIR_MODE = 0o700


def _check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise InputError(
            f"invalid {kind} {value!r}",
            hint=f"a {kind} is 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"journal entry value of type {type(value).__name__} is not JSON serializable")


def _repair_hint(path: Path) -> str:
    return (
        f"inspect {path} by hand (a backup or the journal next to it shows what happened); "
        f"fix it, or move its run directory aside and start a new run"
    )


class RunStore:
    def __init__(self, root: Path = Path("state")) -> None:
        self.root = Path(root)

    # ---- paths -------------------------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.root / _check_name("host name", host)

    def run_dir(self, host: str, run_id: str) -> Path:
        return self.host_dir(host) / _check_name("run id", run_id)

    def _ensure_dir(self, path: Path) -> None:
        """Create `path` and its missing parents below root, each 0700, fsyncing each parent."""
        if path.is_dir():
            return
        if path == self.root:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._ensure_dir(path.parent)
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            return
        os.chmod(path, _DIR_MODE)
        _fsync_dir(path.parent)

    # ---- run.json ----------------------------------------------------------------------------
    def create(self, record: RunRecord) -> None:
        """Make the run's directory and write its run.json; refuse if the run exists already."""
        path = self.run_dir(record.host, record.run_id) / RUN_FILE
        if path.exists():
            raise StateCorrupt(
                f'run {record.run_id} of host "{record.host}" exists already',
                hint="run ids are unique; this is a bug, or the clock went backwards",
            )
        self._write(record)

    def save(self, record: RunRecord) -> None:
        """Replace run.json atomically (temp in the same dir, fsync, os.replace, fsync the dir)."""
        record.updated = utcnow()
        self._write(record)

    def _write(self, record: RunRecord) -> None:
        directory = self.run_dir(record.host, record.run_id)
        self._ensure_dir(directory)
        data = (record.model_dump_json(indent=2) + "\n").encode()
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / RUN_FILE)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)

    def load(self, host: str, run_id: str) -> RunRecord:
        directory = self.run_dir(host, run_id)
        path = directory / RUN_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            if not directory.is_dir():
                raise NoRun(f'host "{host}" has no run {run_id}') from None
            raise StateCorrupt(f"{path} is missing", hint=_repair_hint(path)) from None
        except OSError as e:
            raise StateCorrupt(f"cannot read {path}: {e.strerror}", hint=_repair_hint(path)) from e
        try:
            record = RunRecord.model_validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top)"
            raise StateCorrupt(
                f"{path} is not a valid run record: {where}: {first['msg']} ({e.error_count()} problem(s))",
                hint=_repair_hint(path),
            ) from e
        if record.host != host or record.run_id != run_id:
            raise StateCorrupt(
                f"{path} belongs to run {record.run_id} of host {record.host!r}", hint=_repair_hint(path)
            )
        return record

    def runs(self, host: str) -> list[str]:
        """Run ids of `host`, oldest first (run ids sort by time). Dirs without run.json are skipped."""
        directory = self.host_dir(host)
        if not directory.is_dir():
            return []
        return sorted(
            p.name for p in directory.iterdir() if _NAME_RE.match(p.name) and (p / RUN_FILE).is_file()
        )

    def hosts(self) -> list[str]:
        """Hosts that have at least one run, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _NAME_RE.match(p.name) and self.runs(p.name))

    def latest(self, host: str) -> RunRecord | None:
        ids = self.runs(host)
        return self.load(host, ids[-1]) if ids else None

    def active_run(self, host: str) -> RunRecord | None:
        record = self.latest(host)
        return record if record is not None and not record.finished else None

    # ---- journal.jsonl -----------------------------------------------------------------------
    def append(self, host: str, run_id: str, entry: dict[str, Any]) -> None:
        """Append one compact JSON line (with "ts" if missing) and fsync. A torn tail left by a
        crash is cut off first, so it cannot become a corrupt line in the middle."""
        directory = self.run_dir(host, run_id)
        self._ensure_dir(directory)
        entry = dict(entry)
        entry.setdefault("ts", utcnow().isoformat())
        line = (json.dumps(entry, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n").encode()
        path = directory / JOURNAL_FILE
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)
            _cut_torn_tail(fd)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def journal(self, host: str, run_id: str) -> list[dict[str, Any]]:
        path = self.run_dir(host, run_id) / JOURNAL_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        entries: list[dict[str, Any]] = []
        for number, raw in enumerate(lines, start=1):
            entry = _parse_line(raw)
            if entry is None:
                if number == len(lines) and not torn:
                    break  # last line, complete but garbage: a crash artefact, ignored
                raise StateCorrupt(
                    f"{path}:{number}: not a JSON object",
                    hint=f"look at line {number} of {path}; remove or fix it (the journal is plain JSON lines)",
                )
            entries.append(entry)
        return entries

    # ---- lock --------------------------------------------------------------------------------
    def lock(self, host: str) -> HostLock:
        directory = self.host_dir(host)
        return HostLock(host, directory / LOCK_FILE, lambda: self._ensure_dir(directory))


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def _cut_torn_tail(fd: int) -> None:
    """Truncate the last line if it lacks its newline or is not a JSON object."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size
    start, chunk = end, 8192
    while start > 0:
        lo = max(0, start - chunk)
        buf = os.pread(fd, start - lo, lo)
        nl = buf.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    if end == size or _parse_line(os.pread(fd, end - start, start)) is None:
        os.ftruncate(fd, start)
        os.fsync(fd)


class HostLock:
    """Exclusive, non-blocking flock on <root>/<host>/.lock. The OS frees it if the process dies."""

    def __init__(self, host: str, path: Path, prepare: Callable[[], None]) -> None:
        self.host = host
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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise self._locked_error(fd) from None
            info = {
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "since": utcnow().isoformat(timespec="seconds"),
                "argv": list(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _locked_error(self, fd: int) -> LockedError:
        info = None
        for _ in range(50):  # the holder writes its name right after it got the lock: give it a moment
            size = os.fstat(fd).st_size
            info = _parse_line(os.pread(fd, min(size, 65536), 0).strip()) if size else None
            if info is not None and "pid" in info:
                break
            time.sleep(0.01)
        if info is None or "pid" not in info:
            return LockedError(f'host "{self.host}" is locked by another process (holder not recorded yet)')
        holder = f'pid {info["pid"]} on {info.get("hostname", "?")} since {info.get("since", "?")}'
        argv = info.get("argv")
        hint = LockedError.default_hint
        if isinstance(argv, list) and argv:
            hint = f"holder runs: {' '.join(str(a) for a in argv)}; {hint}"
        return LockedError(f'host "{self.host}" is locked by {holder}', hint=hint)

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
