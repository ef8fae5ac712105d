"""Run state on disk: run.json (atomic replace), journal.jsonl (append + fsync), a per-host lock.

Layout under `root` (default `state/`)::

    <root>/<host>/.lock                      flock; holds the holder's {pid, hostname, since, argv}
    <root>/<host>/<run-id>/run.json          the RunRecord, replaced atomically
    <root>/<host>/<run-id>/journal.jsonl     one JSON object per line, fsynced per append
    <root>/<host>/<run-id>/events.jsonl      written by ui.EventLog
    <root>/<host>/<run-id>/plan.yml          the run's copy of its plan (run_plan.py; written with the run)

Files are 0600 and directories 0700, set explicitly whatever the umask; no state file is opened
through a symlink, and a state directory that is a link, not ours, or writable by others is
refused (files.py). A run directory appears complete: run.json and an empty journal are written
in a hidden temp directory that is then renamed into place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from upgrader.clock import utcnow
from upgrader.errors import InputError, NoRun, StateCorrupt
from upgrader.phases import Phase
from upgrader.store import journal as jfile
from upgrader.store.files import DIR_MODE, check_dir, fsync_dir, read_private, secure_open, write_all, writing
from upgrader.store.lock import HostLock
from upgrader.store.reconcile import phase_behind

if TYPE_CHECKING:  # pydantic is imported by load(), not by reading the state's layout (`upgrader status`)
    from upgrader.record import RunRecord

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_RUN_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$")  # record.new_run_id
RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"
_TMP_PREFIX = f".{RUN_FILE}."
_NEW_RUN_PREFIX = ".new-"


def _check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise InputError(
            f"invalid {kind} {value!r}",
            hint=f"a {kind} is 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def _repair_hint(path: Path) -> str:
    return (
        f"inspect {path} by hand (a backup or the journal next to it shows what happened); "
        f"fix it, or move its run directory aside and start a new run"
    )


def _missing_run_json(path: Path) -> StateCorrupt:
    return StateCorrupt(
        f"{path} is missing: the run's record is gone, its directory is still there",
        hint=(
            f"{path.parent / JOURNAL_FILE} (if there) shows what the run did; restore run.json from a backup, or "
            f"check the VMs by hand (the run may have cut over) and then move {path.parent} aside; "
            "until then no new run starts on this host"
        ),
    )


class RunStore:
    def __init__(self, root: Path = Path("state")) -> None:
        self.root = Path(root)

    # ---- paths -------------------------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.root / _check_name("host name", host)

    def run_dir(self, host: str, run_id: str) -> Path:
        return self.host_dir(host) / _check_name("run id", run_id)

    def _checked(self, *dirs: Path) -> bool:
        """Check root and then each of `dirs` (outermost first); False once one does not exist."""
        return all(check_dir(d) for d in (self.root, *dirs))

    def _ensure_dir(self, path: Path) -> None:
        """Create root and the directories below it down to `path`, each 0700, fsyncing each
        parent; refuse an existing one that is unsafe."""
        if not self.root.parent.is_dir():
            with writing(self.root.parent):
                self.root.parent.mkdir(parents=True, exist_ok=True)
        current = self.root
        for part in (None, *path.relative_to(self.root).parts):
            current = current if part is None else current / part
            if not check_dir(current):
                self._make_dir(current)

    @staticmethod
    def _make_dir(path: Path) -> None:
        with writing(path.parent):
            try:
                path.mkdir(mode=DIR_MODE)
            except FileExistsError:
                check_dir(path)
                return
            os.chmod(path, DIR_MODE)
            fsync_dir(path.parent)

    # ---- run.json ----------------------------------------------------------------------------
    def create(self, record: RunRecord, files: Mapping[str, bytes] | None = None) -> None:
        """Make the run's directory with its run.json, an empty journal and `files` (name -> bytes,
        0600; the plan's copy), all or nothing (built in a hidden temp directory, then renamed);
        refuse if the run exists already."""
        import shutil  # here, not at the top: reading the state (`upgrader status`) starts faster
        import tempfile

        directory = self.run_dir(record.host, record.run_id)
        self._ensure_dir(directory.parent)
        if os.path.lexists(directory):
            raise StateCorrupt(
                f'run {record.run_id} of host "{record.host}" exists already',
                hint="run ids are unique; this is a bug, or the clock went backwards",
            )
        with writing(directory.parent):
            tmp = Path(tempfile.mkdtemp(prefix=_NEW_RUN_PREFIX, dir=directory.parent))  # 0700
            try:
                jfile.create_empty(tmp / JOURNAL_FILE)
                for name, data in (files or {}).items():
                    self._write_new(tmp / _check_name("file", name), data)
                self._replace_run_json(tmp, record)
                os.rename(tmp, directory)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(directory.parent)

    def save(self, record: RunRecord) -> None:
        """Replace run.json atomically (temp in the same dir, fsync, os.replace, fsync the dir)."""
        record.updated = utcnow()
        directory = self.run_dir(record.host, record.run_id)
        self._ensure_dir(directory)
        with writing(directory):
            self._replace_run_json(directory, record)

    @staticmethod
    def _write_new(path: Path, data: bytes) -> None:
        fd = secure_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, host: str, run_id: str, name: str) -> bytes | None:
        """A file kept in the run's directory (None if it has none: a run from before it was kept)."""
        try:
            return read_private(self.run_dir(host, run_id) / _check_name("file", name))
        except FileNotFoundError:
            return None

    def replace_file(self, host: str, run_id: str, name: str, data: bytes) -> None:
        """Replace a file kept in the run's directory atomically (0600; temp, fsync, rename, fsync dir)."""
        import secrets

        directory = self.run_dir(host, run_id)
        self._ensure_dir(directory)
        with writing(directory):
            tmp = directory / f".{_check_name('file', name)}.{secrets.token_hex(6)}.tmp"
            try:
                self._write_new(tmp, data)
                os.replace(tmp, directory / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(directory)

    @staticmethod
    def _replace_run_json(directory: Path, record: RunRecord) -> None:
        import secrets

        data = (record.model_dump_json(indent=2) + "\n").encode()
        tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(6)}.tmp"
        fd = secure_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, directory / RUN_FILE)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(directory)

    def load(self, host: str, run_id: str) -> RunRecord:
        from pydantic import ValidationError

        from upgrader.record import RunRecord

        directory = self.run_dir(host, run_id)
        if not self._checked(directory.parent, directory):
            raise NoRun(f'host "{host}" has no run {run_id}')
        path = directory / RUN_FILE
        try:
            text = read_private(path)
        except FileNotFoundError:
            raise _missing_run_json(path) from None
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

    def load_checked(self, host: str, run_id: str, *, repair: bool = True) -> tuple[RunRecord, list[dict[str, Any]]]:
        """The run's record and journal, their phases reconciled. The journal's transitions are the
        truth: run.json exactly one transition behind (a crash between journal and save) is rolled
        forward (phase = the transition's dest, parked cleared), noted in the journal and saved;
        with `repair=False` (read-only views, no lock held) only in memory. Any other disagreement
        is StateCorrupt. Call it holding the host lock when `repair` is true."""
        from upgrader.record import held_from_journal

        record = self.load(host, run_id)
        entries = self.journal(host, run_id)
        directory = self.run_dir(host, run_id)
        dest = phase_behind(record.phase, entries, directory / RUN_FILE, directory / JOURNAL_FILE)
        if dest is None:
            return record, entries
        note = {"kind": "reconciled", "file": RUN_FILE, "phase_was": record.phase.value, "phase": dest.value,
                "why": "the journal was one transition ahead of run.json (a crash between the two writes)"}
        record.phase, record.parked = dest, None
        record.held = held_from_journal(entries) if dest == Phase.HELD else None
        if repair:
            self.append(host, run_id, note)
            entries = self.journal(host, run_id)
            self.save(record)
        return record, entries

    def runs(self, host: str) -> list[str]:
        """Run ids of `host`, oldest first (run ids sort by time). A run directory without a
        (readable) run.json is listed too: load() then says what is wrong with it."""
        directory = self.host_dir(host)
        if not self._checked(directory):
            return []
        return sorted(p.name for p in directory.iterdir() if self._is_run_entry(p))

    @staticmethod
    def _is_run_entry(path: Path) -> bool:
        if _RUN_ID_RE.match(path.name):
            return True
        return bool(_NAME_RE.match(path.name)) and os.path.lexists(path / RUN_FILE)

    def hosts(self) -> list[str]:
        """Hosts that have at least one run, sorted."""
        if not check_dir(self.root):
            return []
        candidates = (p for p in self.root.iterdir() if _NAME_RE.match(p.name) and (p.is_symlink() or p.is_dir()))
        return sorted(p.name for p in candidates if self.runs(p.name))

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
        path = directory / JOURNAL_FILE
        if not os.path.lexists(path) and os.path.lexists(directory / RUN_FILE):
            raise jfile.missing_journal(path, directory / RUN_FILE)  # never start a new, partial one
        with writing(directory):
            jfile.append_line(path, jfile.encode_entry(entry))

    def journal(self, host: str, run_id: str) -> list[dict[str, Any]]:
        """The journal's entries. Missing: [] for a run that does not exist, StateCorrupt when the
        run's run.json is there (a fresh run always has an empty journal)."""
        directory = self.run_dir(host, run_id)
        path = directory / JOURNAL_FILE
        if not self._checked(directory.parent, directory):
            return []
        try:
            data = read_private(path)
        except FileNotFoundError:
            if os.path.lexists(directory / RUN_FILE):
                raise jfile.missing_journal(path, directory / RUN_FILE) from None
            return []
        except OSError as e:
            raise StateCorrupt(f"cannot read {path}: {e.strerror}", hint=_repair_hint(path)) from e
        return jfile.parse_journal(path, data)

    # ---- lock --------------------------------------------------------------------------------
    def lock(self, host: str) -> HostLock:
        directory = self.host_dir(host)
        return HostLock(host, directory / LOCK_FILE, lambda: self._ensure_dir(directory))
