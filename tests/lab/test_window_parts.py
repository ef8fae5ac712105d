"""The cutover bench's window parts, read from a run's journal (upgrader.lab.window_parts)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from upgrader import app
from upgrader.lab.window_parts import journal_window_parts, window_parts
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile

T0 = dt.datetime(2026, 12, 2, 5, 0, 0, tzinfo=dt.timezone.utc)


def _at(kind: str, key: str, seconds: float) -> dict[str, Any]:
    return {"kind": kind, "key": key, "ts": (T0 + dt.timedelta(seconds=seconds)).isoformat()}


def test_each_part_runs_from_the_previous_done_and_the_first_from_the_quiesce_begin() -> None:
    entries = [_at("begin", "cutover.hold_clients", 0.0), _at("done", "cutover.hold_clients", 0.1),
               _at("begin", "cutover.quiesce", 0.125), _at("done", "cutover.quiesce", 0.325),
               _at("begin", "cutover.final_sync", 0.33), _at("done", "cutover.final_sync", 0.55),
               _at("done", "cutover.sync_close", 0.575),
               _at("done", "cutover.takeover", 0.6), _at("done", "cutover.resume", 0.65),
               _at("done", "cutover.service_back", 0.7)]
    parts = window_parts(entries)
    assert parts == {"quiesce": 0.2, "final_sync": 0.225, "sync_close": 0.025, "takeover": 0.025, "resume": 0.05,
                     "service_back": 0.05, "total": 0.575, "held": 0.6}  # no claim_address under mac_move


def test_an_unfinished_window_has_no_parts() -> None:
    assert window_parts([_at("begin", "cutover.quiesce", 0.0), _at("done", "cutover.quiesce", 0.2)]) == {}


def test_the_parts_of_a_real_run_add_up_to_its_downtime(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    [journal] = (tmp_path / "state").glob("mailhost/*/journal.jsonl")
    parts = journal_window_parts(journal)
    steps = [k for k in parts if k not in ("total", "held")]
    assert steps == ["quiesce", "final_sync", "sync_close", "takeover", "resume", "service_back"]
    assert all(parts[k] >= 0 for k in steps)
    assert abs(sum(parts[k] for k in steps) - parts["total"]) < 0.01
    assert abs(parts["total"] - record.output("cutover.service_back")["downtime"]) < 0.05
