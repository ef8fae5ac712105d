"""journal.jsonl: one compact JSON object per line, appended with O_APPEND and fsynced.

A torn last line (the process died mid-write) is ignored on read and cut off by the next append;
a bad line in the middle is corrupt state (file:line). Appends hold an flock on the journal itself
(not the host lock): `upgrader ssh` journals beside the process that runs the run, and one
writer's tail check must never see, and cut, the other's line half-written."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from upgrader.errors import StateCorrupt
from upgrader.store.files import secure_open, write_all


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"journal entry value of type {type(value).__name__} is not JSON serializable")


def encode_entry(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n").encode()


def append_line(path: Path, line: bytes, *, create: bool = True) -> None:
    """Append one encoded line and fsync, after cutting off a torn tail."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    fd = secure_open(path, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close; held for one line and its fsync
        cut_torn_tail(fd)
        write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_empty(path: Path) -> None:
    """A new, empty journal (refuses to replace one), fsynced."""
    fd = secure_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def parse_journal(path: Path, data: bytes) -> list[dict[str, Any]]:
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    entries: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        entry = parse_line(raw)
        if entry is None:
            if number == len(lines) and not torn:
                break  # last line, complete but garbage: a crash artefact, ignored
            raise StateCorrupt(
                f"{path}:{number}: not a JSON object",
                hint=f"look at line {number} of {path}; remove or fix it (the journal is plain JSON lines)",
            )
        entries.append(entry)
    return entries


def cut_torn_tail(fd: int) -> None:
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
    if end == size or parse_line(os.pread(fd, end - start, start)) is None:
        os.ftruncate(fd, start)
        os.fsync(fd)


def missing_journal(path: Path, run_json: Path) -> StateCorrupt:
    return StateCorrupt(
        f"{path} is missing, but {run_json} exists: what this run did is unknown",
        hint=(
            f"restore {path.name} from a backup; only if run.json says phase preflight and nothing ran is an "
            f"empty journal right (`install -m 600 /dev/null {path}`); otherwise check the VMs by hand "
            f"(the run may have cut over) before moving {path.parent} aside"
        ),
    )
