"""State files are never opened through symlinks; unsafe state directories are refused; a state
directory that cannot be written gives StateUnwritable (exit 4), not an OSError."""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from upgrader.errors import StateCorrupt, StateUnwritable, UnsafeState
from upgrader.record import RunRecord
from upgrader.store import RunStore, secure_open, touch_private

MakeRecord = Callable[..., RunRecord]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o644)
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_lock_symlink_is_refused(store: RunStore, victim: Path) -> None:
    (store.root / "mailhost").mkdir(parents=True)
    (store.root / "mailhost" / ".lock").symlink_to(victim)
    with pytest.raises(UnsafeState) as info:
        store.lock("mailhost").acquire()
    assert info.value.exit_code == 4 and "symbolic link" in info.value.message and info.value.hint
    assert_untouched(victim)


def test_journal_symlink_is_refused(store: RunStore, make_record: MakeRecord, victim: Path) -> None:
    rec = make_record()
    store.create(rec)
    path = store.run_dir("mailhost", rec.run_id) / "journal.jsonl"
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(UnsafeState):
        store.append("mailhost", rec.run_id, {"kind": "begin"})
    with pytest.raises(UnsafeState):
        store.journal("mailhost", rec.run_id)
    assert_untouched(victim)


def test_run_json_symlink_is_refused(store: RunStore, make_record: MakeRecord, tmp_path: Path) -> None:
    rec = make_record()
    store.create(rec)
    path = store.run_dir("mailhost", rec.run_id) / "run.json"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(UnsafeState, match="symbolic link"):
        store.load("mailhost", rec.run_id)


def test_fifo_instead_of_run_json_does_not_hang(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    path = store.run_dir("mailhost", rec.run_id) / "run.json"
    path.unlink()
    os.mkfifo(path)

    def hung(*_: object) -> None:
        raise TimeoutError("opening the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(UnsafeState, match="is a FIFO, not a regular file"):
            store.load("mailhost", rec.run_id)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_touch_private(tmp_path: Path, victim: Path, umask0: None) -> None:
    flag = tmp_path / "abort-requested"
    touch_private(flag)
    touch_private(flag)  # idempotent
    assert flag.read_bytes() == b"" and stat.S_IMODE(flag.stat().st_mode) == 0o600
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(UnsafeState):
        touch_private(link)
    assert_untouched(victim)


def test_secure_open_makes_written_files_private(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o666)
    os.close(secure_open(path, os.O_WRONLY | os.O_APPEND))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("which", ["root", "host", "run"])
def test_symlinked_state_dir_is_refused(store: RunStore, make_record: MakeRecord, tmp_path: Path, which: str) -> None:
    rec = make_record()
    real = RunStore(tmp_path / "real")
    real.create(rec)
    target = {"root": real.root, "host": real.root / "mailhost", "run": real.run_dir("mailhost", rec.run_id)}[which]
    link = {"root": store.root, "host": store.root / "mailhost", "run": store.run_dir("mailhost", rec.run_id)}[which]
    link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    link.symlink_to(target)
    with pytest.raises(UnsafeState) as info:
        store.load("mailhost", rec.run_id)
    assert str(link) in info.value.message and "symbolic link" in info.value.message
    with pytest.raises(UnsafeState):
        store.append("mailhost", rec.run_id, {"kind": "begin"})
    if which != "run":
        with pytest.raises(UnsafeState):
            store.lock("mailhost").acquire()


@pytest.mark.parametrize("which", ["root", "host", "run"])
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_writable_state_dir_is_refused(store: RunStore, make_record: MakeRecord, which: str, mode: int) -> None:
    rec = make_record()
    store.create(rec)
    path = {"root": store.root, "host": store.root / "mailhost", "run": store.run_dir("mailhost", rec.run_id)}[which]
    path.chmod(mode)
    for call in (lambda: store.load("mailhost", rec.run_id), lambda: store.journal("mailhost", rec.run_id),
                 lambda: store.save(rec), lambda: store.runs("mailhost") and store.latest("mailhost")):
        with pytest.raises(UnsafeState) as info:
            call()
        assert info.value.exit_code == 4
        assert "writable by others" in info.value.message
        assert info.value.hint and f"chmod 700 {path}" in info.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_foreign_state_dir_is_refused(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    os.chown(store.root / "mailhost", 4242, 4242)
    with pytest.raises(UnsafeState, match="belongs to uid 4242"):
        store.latest("mailhost")


def test_run_id_path_that_is_a_file(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    (store.root / "mailhost" / "20261124T230000Z-beef").write_text("not a dir")
    with pytest.raises(StateCorrupt, match="not a directory"):
        store.latest("mailhost")


# ------------------------------------------------------------------------------ unwritable

def _raise(code: int) -> Callable[..., object]:
    def fail(*_: object, **__: object) -> object:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_full_or_read_only_state_dir_on_append(store: RunStore, make_record: MakeRecord,
                                               monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    rec = make_record()
    store.create(rec)
    monkeypatch.setattr(os, "write", _raise(code))
    with pytest.raises(StateUnwritable) as info:
        store.append("mailhost", rec.run_id, {"kind": "begin"})
    run_dir = store.run_dir("mailhost", rec.run_id)
    assert info.value.exit_code == 4
    assert info.value.message == f"cannot write {run_dir}: {os.strerror(code)}"
    assert info.value.hint and "upgrader resume HOST" in info.value.hint


def test_full_state_dir_on_save_create_and_lock(store: RunStore, make_record: MakeRecord,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_record()
    store.create(rec)
    monkeypatch.setattr(os, "fsync", _raise(errno.ENOSPC))
    with pytest.raises(StateUnwritable, match="No space left on device"):
        store.save(rec)
    with pytest.raises(StateUnwritable, match=f"cannot write {store.root / 'mailhost'}: No space"):
        store.create(make_record())
    with pytest.raises(StateUnwritable):
        store.lock("mailhost").acquire()
    monkeypatch.undo()
    assert store.runs("mailhost") == [rec.run_id]  # the failed create left nothing behind


def test_read_only_state_root_cannot_be_made(tmp_path: Path, make_record: MakeRecord,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "state")
    monkeypatch.setattr(os, "mkdir", _raise(errno.EROFS))
    with pytest.raises(StateUnwritable, match=f"cannot write {tmp_path}: Read-only file system") as info:
        store.create(make_record())
    assert info.value.hint and "remount" in info.value.hint


def test_other_os_errors_are_not_disguised(store: RunStore, make_record: MakeRecord,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_record()
    store.create(rec)
    monkeypatch.setattr(os, "write", _raise(errno.EIO))
    with pytest.raises(OSError) as info:
        store.append("mailhost", rec.run_id, {"kind": "begin"})
    assert not isinstance(info.value, StateUnwritable) and info.value.errno == errno.EIO
