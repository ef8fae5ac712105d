"""A missing journal or run.json is refused with a hint, never read as empty or skipped."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from upgrader.errors import StateCorrupt
from upgrader.record import RunRecord
from upgrader.store import RunStore

MakeRecord = Callable[..., RunRecord]


def test_create_makes_an_empty_private_journal(store: RunStore, make_record: MakeRecord, umask0: None) -> None:
    rec = make_record()
    store.create(rec)
    path = store.run_dir("mailhost", rec.run_id) / "journal.jsonl"
    assert path.read_bytes() == b""
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert store.journal("mailhost", rec.run_id) == []
    assert [p.name for p in (store.root / "mailhost").iterdir()] == [rec.run_id]  # no temp dir left


def test_missing_journal_of_existing_run_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    store.append("mailhost", rec.run_id, {"kind": "transition", "source": "preflight", "dest": "snapshot"})
    path = store.run_dir("mailhost", rec.run_id) / "journal.jsonl"
    path.unlink()
    with pytest.raises(StateCorrupt) as info:
        store.journal("mailhost", rec.run_id)
    assert info.value.exit_code == 4
    assert f"{path} is missing" in info.value.message
    assert info.value.hint and "restore journal.jsonl" in info.value.hint
    with pytest.raises(StateCorrupt, match="is missing"):  # nor does an append start a new, partial one
        store.append("mailhost", rec.run_id, {"kind": "begin"})
    assert not path.exists()


def test_failed_create_leaves_nothing(store: RunStore, make_record: MakeRecord, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_record()

    def boom(*_: object) -> None:
        raise RuntimeError("killed between journal and rename")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(RuntimeError):
        store.create(rec)
    monkeypatch.undo()
    assert list((store.root / "mailhost").iterdir()) == []
    assert store.runs("mailhost") == []
    store.create(rec)
    assert store.load("mailhost", rec.run_id) == rec


@pytest.mark.parametrize("damage", ["missing", "directory", "dir-with-journal-only"])
def test_run_dir_without_run_json_is_listed_and_refused(store: RunStore, make_record: MakeRecord, damage: str) -> None:
    good = make_record(minute=1)
    store.create(good)
    broken = make_record(minute=2)
    store.create(broken)
    run_json = store.run_dir("mailhost", broken.run_id) / "run.json"
    run_json.unlink()
    if damage == "directory":
        run_json.mkdir()
    elif damage == "missing":
        (run_json.parent / "journal.jsonl").unlink()

    assert store.runs("mailhost") == [good.run_id, broken.run_id]
    assert store.hosts() == ["mailhost"]
    with pytest.raises(StateCorrupt) as info:
        store.latest("mailhost")
    assert info.value.exit_code == 4 and str(run_json) in info.value.message
    assert info.value.hint
    with pytest.raises(StateCorrupt):
        store.active_run("mailhost")  # so `start` cannot begin a second run beside a forgotten one


def test_run_id_dir_alone_makes_a_host(store: RunStore) -> None:
    (store.root / "ghost" / "20261124T210000Z-dead").mkdir(parents=True)
    assert store.hosts() == ["ghost"]
    with pytest.raises(StateCorrupt, match="run.json is missing"):
        store.latest("ghost")
