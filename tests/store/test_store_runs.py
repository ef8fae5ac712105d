from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from upgrader.errors import InputError, NoRun, StateCorrupt
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore

MakeRecord = Callable[..., RunRecord]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_save_load_round_trip(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    rec.phase = Phase.CLONE
    rec.outputs["snapshot"] = {"name": "pre-upgrade", "disks": ["vda"]}
    before = rec.updated
    store.save(rec)
    assert rec.updated > before
    loaded = store.load("mailhost", rec.run_id)
    assert loaded == rec
    assert store.run_dir("mailhost", rec.run_id) == store.root / "mailhost" / rec.run_id


def test_create_refuses_existing_run(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    with pytest.raises(StateCorrupt, match="exists already"):
        store.create(rec)


def test_permissions_with_umask_0(store: RunStore, make_record: MakeRecord, umask0: None) -> None:
    rec = make_record()
    store.create(rec)
    store.save(rec)
    store.append("mailhost", rec.run_id, {"event": "begin", "step": "snapshot"})
    with store.lock("mailhost"):
        pass
    run_dir = store.run_dir("mailhost", rec.run_id)
    for d in (store.root, store.root / "mailhost", run_dir):
        assert mode(d) == 0o700, d
    for f in (run_dir / "run.json", run_dir / "journal.jsonl", store.root / "mailhost" / ".lock"):
        assert mode(f) == 0o600, f


def test_load_missing_run(store: RunStore) -> None:
    with pytest.raises(NoRun):
        store.load("mailhost", "20261124T200000Z-0000")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not a valid run record"),
        (b'{"run_id": "x"}', "not a valid run record"),
        (b"", "not a valid run record"),
    ],
)
def test_load_corrupt(store: RunStore, make_record: MakeRecord, content: bytes, match: str) -> None:
    rec = make_record()
    store.create(rec)
    (store.run_dir("mailhost", rec.run_id) / "run.json").write_bytes(content)
    with pytest.raises(StateCorrupt, match=match) as info:
        store.load("mailhost", rec.run_id)
    assert info.value.exit_code == 4
    assert info.value.hint and "run.json" in info.value.hint


def test_load_run_json_of_another_run(store: RunStore, make_record: MakeRecord) -> None:
    a, b = make_record(), make_record()
    store.create(a)
    store.create(b)
    src = store.run_dir("mailhost", a.run_id) / "run.json"
    (store.run_dir("mailhost", b.run_id) / "run.json").write_bytes(src.read_bytes())
    with pytest.raises(StateCorrupt, match="belongs to run"):
        store.load("mailhost", b.run_id)


def test_runs_latest_active_hosts(store: RunStore, make_record: MakeRecord) -> None:
    assert store.hosts() == []
    assert store.runs("mailhost") == []
    assert store.latest("mailhost") is None
    assert store.active_run("mailhost") is None

    old = make_record(minute=5, phase=Phase.ABORTED, finished=True)
    new = make_record(minute=30)
    other = make_record(host="db1", minute=10)
    for rec in (new, other, old):  # creation order must not matter
        store.create(rec)
    # noise that must not count as runs or hosts
    (store.root / "mailhost" / "notes.txt").write_text("x")
    (store.root / "mailhost" / ".new-x1y2z3").mkdir()  # a create that died before its rename
    (store.root / "mailhost" / "notes.d").mkdir()  # not a run id, no run.json
    (store.root / "emptyhost").mkdir()
    with store.lock("lockonly"):
        pass

    assert store.runs("mailhost") == [old.run_id, new.run_id]
    assert store.hosts() == ["db1", "mailhost"]
    latest = store.latest("mailhost")
    assert latest is not None and latest.run_id == new.run_id
    active = store.active_run("mailhost")
    assert active is not None and active.run_id == new.run_id

    new.phase, new.finished = Phase.DECOMMISSIONED, True
    store.save(new)
    assert store.active_run("mailhost") is None
    assert store.latest("mailhost") == new


@pytest.mark.parametrize("host", ["", "-x", ".hidden", "..", "a/b", "a b", "x" * 64, "../../etc", "ä"])
def test_invalid_host_rejected(store: RunStore, make_record: MakeRecord, host: str) -> None:
    with pytest.raises(InputError) as info:
        store.runs(host)
    assert info.value.exit_code == 2 and info.value.hint
    with pytest.raises(InputError):
        store.lock(host)
    with pytest.raises(InputError):
        store.create(make_record(host=host))
    assert not store.root.exists()


def test_valid_host_names(store: RunStore) -> None:
    for host in ("a", "mail-host.example_1", "X" * 63):
        assert store.runs(host) == []


def test_invalid_run_id_rejected(store: RunStore) -> None:
    with pytest.raises(InputError):
        store.load("mailhost", "../other")


def test_run_json_is_plain_json(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    data = json.loads((store.run_dir("mailhost", rec.run_id) / "run.json").read_text())
    assert data["run_id"] == rec.run_id and data["phase"] == "preflight"
