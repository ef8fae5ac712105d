"""load_checked: run.json's phase against the journal's transitions (the truth)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from upgrader.errors import StateCorrupt
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore

MakeRecord = Callable[..., RunRecord]


def transition(store: RunStore, rec: RunRecord, source: Phase, dest: Phase, trigger: str = "advance") -> None:
    store.append(rec.host, rec.run_id, {"kind": "transition", "source": source.value, "dest": dest.value, "trigger": trigger})


def walk(store: RunStore, rec: RunRecord, *phases: Phase, save: bool = True) -> None:
    """Journal transitions through `phases` like the engine does; save run.json after each if `save`."""
    for source, dest in zip(phases, phases[1:]):
        transition(store, rec, source, dest)
        if save:
            rec.phase = dest
            store.save(rec)


def test_fresh_run_is_consistent(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    store.append(rec.host, rec.run_id, {"kind": "begin", "key": "preflight"})
    loaded, entries = store.load_checked(rec.host, rec.run_id)
    assert loaded == rec and [e["kind"] for e in entries] == ["begin"]


def test_consistent_after_transitions(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    walk(store, rec, Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.CLONE)
    before = (store.run_dir(rec.host, rec.run_id) / "run.json").read_bytes()
    loaded, entries = store.load_checked(rec.host, rec.run_id)
    assert loaded.phase == Phase.CLONE and len(entries) == 2
    assert (store.run_dir(rec.host, rec.run_id) / "run.json").read_bytes() == before  # nothing written


def test_crash_window_rolls_run_json_forward(store: RunStore, make_record: MakeRecord) -> None:
    """The engine journals `completed -> rolling_back` and dies before saving run.json (finding 15)."""
    rec = make_record(phase=Phase.PREFLIGHT)
    store.create(rec)
    walk(store, rec, Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.CLONE)
    rec.parked = "waiting"
    store.save(rec)
    transition(store, rec, Phase.CLONE, Phase.ABORTED, "abort")  # journaled, run.json not saved

    loaded, entries = store.load_checked(rec.host, rec.run_id)
    assert loaded.phase == Phase.ABORTED and loaded.parked is None
    assert entries[-1]["kind"] == "reconciled"
    assert entries[-1]["phase_was"] == "clone" and entries[-1]["phase"] == "aborted"
    on_disk = store.load(rec.host, rec.run_id)
    assert on_disk.phase == Phase.ABORTED and on_disk.parked is None
    again, entries_again = store.load_checked(rec.host, rec.run_id)  # now consistent: no second note
    assert again.phase == Phase.ABORTED and entries_again == entries


def test_crash_window_read_only(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    transition(store, rec, Phase.PREFLIGHT, Phase.SNAPSHOT)
    loaded, entries = store.load_checked(rec.host, rec.run_id, repair=False)
    assert loaded.phase == Phase.SNAPSHOT and [e["kind"] for e in entries] == ["transition"]
    assert store.load(rec.host, rec.run_id).phase == Phase.PREFLIGHT  # nothing written


def test_run_json_ahead_of_journal_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    walk(store, rec, Phase.PREFLIGHT, Phase.SNAPSHOT)
    rec.phase = Phase.CUTOVER  # no transition ever reached it
    store.save(rec)
    with pytest.raises(StateCorrupt) as info:
        store.load_checked(rec.host, rec.run_id)
    err = info.value
    assert err.exit_code == 4
    assert "says phase cutover" in err.message and "preflight -> snapshot" in err.message
    assert str(store.run_dir(rec.host, rec.run_id) / "run.json") in err.message
    assert err.hint and str(store.run_dir(rec.host, rec.run_id) / "journal.jsonl") in err.hint


def test_journal_two_transitions_ahead_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    walk(store, rec, Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.CLONE, save=False)
    with pytest.raises(StateCorrupt, match="says phase preflight.*snapshot -> clone"):
        store.load_checked(rec.host, rec.run_id)


def test_phase_without_any_transition_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record(phase=Phase.COMPLETED)
    store.create(rec)
    with pytest.raises(StateCorrupt, match="says phase completed, but journal.jsonl has no transition"):
        store.load_checked(rec.host, rec.run_id)


def test_transition_to_unknown_phase_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    store.append(rec.host, rec.run_id, {"kind": "transition", "source": "preflight", "dest": "exploded"})
    with pytest.raises(StateCorrupt, match="unknown phase 'exploded'"):
        store.load_checked(rec.host, rec.run_id)


def test_missing_journal_is_corrupt(store: RunStore, make_record: MakeRecord) -> None:
    rec = make_record()
    store.create(rec)
    (store.run_dir(rec.host, rec.run_id) / "journal.jsonl").unlink()
    with pytest.raises(StateCorrupt, match="journal.jsonl is missing"):
        store.load_checked(rec.host, rec.run_id)
