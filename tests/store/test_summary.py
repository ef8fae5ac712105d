"""The light reading behind the `upgrader status` table agrees with RunStore.load_checked, and
leaves anything it is not sure of to it (the same errors, exit 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader import app
from upgrader.errors import StateCorrupt
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore
from upgrader.store.summary import RECORD_FIELDS, latest_summaries, summary


def test_record_fields_follow_the_run_record() -> None:
    assert RECORD_FIELDS == set(RunRecord.model_fields)


def _run(tmp_path: Path, fake_plan: Path) -> tuple[RunStore, Path]:
    store = RunStore(tmp_path / "state")
    app.start(app.Context(store), app.StartOptions("mailhost", str(fake_plan)))
    run_dir = next(p for p in (tmp_path / "state" / "mailhost").iterdir() if p.is_dir())
    return store, run_dir


def _same(store: RunStore, run_id: str) -> None:
    record, _ = store.load_checked("mailhost", run_id, repair=False)
    got = summary(store, "mailhost", run_id)
    assert (got.host, got.run_id, got.phase, got.finished, got.parked, got.updated) == \
        (record.host, record.run_id, record.phase, record.finished, record.parked, record.updated)
    assert (got.cleanup_error is None) == (record.cleanup_error is None)


def test_summary_is_what_load_checked_says(tmp_path: Path, fake_plan: Path) -> None:
    store, run_dir = _run(tmp_path, fake_plan)
    _same(store, run_dir.name)
    assert [s.host for s in latest_summaries(store)] == ["mailhost"]


def test_run_json_one_transition_behind_is_rolled_forward_in_memory(tmp_path: Path, fake_plan: Path) -> None:
    store, run_dir = _run(tmp_path, fake_plan)
    data = json.loads((run_dir / "run.json").read_text())
    data["phase"], data["parked"] = "verify", None  # the last transition verify -> completed not saved
    (run_dir / "run.json").write_text(json.dumps(data))
    got = summary(store, "mailhost", run_dir.name)
    assert got.phase == Phase.COMPLETED and got.parked is None
    _same(store, run_dir.name)
    assert json.loads((run_dir / "run.json").read_text())["phase"] == "verify"  # read-only


@pytest.mark.parametrize("change", [
    lambda d: d.update(surprise=1),  # a field no run record has
    lambda d: d.update(phase="nowhere"),
    lambda d: d.update(timings="not a list"),  # not shown by the table: the light reading misses it...
    lambda d: d.pop("plan_sha256"),
    lambda d: d.update(updated="yesterday"),
], ids=["unknown-field", "bad-phase", "bad-timings", "missing-field", "bad-date"])
def test_invalid_run_json_is_state_corrupt(tmp_path: Path, fake_plan: Path, change) -> None:  # type: ignore[no-untyped-def]
    store, run_dir = _run(tmp_path, fake_plan)
    data = json.loads((run_dir / "run.json").read_text())
    change(data)
    (run_dir / "run.json").write_text(json.dumps(data))
    if "timings" in data and data["timings"] == "not a list":  # ...which `status HOST` catches
        summary(store, "mailhost", run_dir.name)
        with pytest.raises(StateCorrupt):
            store.load_checked("mailhost", run_dir.name, repair=False)
        return
    with pytest.raises(StateCorrupt) as info:
        summary(store, "mailhost", run_dir.name)
    assert info.value.exit_code == 4 and "not a valid run record" in info.value.message


def test_not_json_and_missing_journal(tmp_path: Path, fake_plan: Path) -> None:
    store, run_dir = _run(tmp_path, fake_plan)
    (run_dir / "journal.jsonl").unlink()
    with pytest.raises(StateCorrupt, match="journal.jsonl is missing"):
        summary(store, "mailhost", run_dir.name)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(StateCorrupt, match="not a valid run record"):
        summary(store, "mailhost", run_dir.name)
