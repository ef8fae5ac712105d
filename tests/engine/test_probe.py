"""A plan step's `probe:` on the fakes: asked before the step first runs (exit 0: skipped and
journaled as such, non-zero: run), and for a step in doubt or a held run's failed step as before."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from upgrader import app
from upgrader.events import Event, StepDone, StepInDoubt
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.probe_skip import PROBE_SKIP_REASON, SkippedByProbe, skipped_by_probe
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN, effects
from upgrader.ui import RunView, figures

PROBE = "test -e /var/db/fetched"
FETCH_STEP = "  - name: fetch\n    run: labos-update fetch\n"


def probed_plan(tmp_path: Path, world: WorldFile) -> Path:
    """The fake plan with a `probe:` on its first step (`labos-update fetch`)."""
    text = FAKE_PLAN.format(world=world.path, keep="1h")
    assert FETCH_STEP in text
    path = tmp_path / "probed.yml"
    path.write_text(text.replace(FETCH_STEP, FETCH_STEP + f"    probe: {PROBE}\n"))
    return path


def canned(world: WorldFile, *entries: dict[str, Any]) -> None:
    with world.change() as data:
        data["commands"] = [*entries, *data["commands"]]


def runs_of(world: WorldFile, command: str) -> int:
    return sum(1 for e in effects(world, "run") if e["cmd"] == command)


def context(tmp_path: Path, events: list[Event]) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [events.append])


def journal(tmp_path: Path, record: RunRecord) -> list[dict[str, Any]]:
    return RunStore(tmp_path / "state").journal(record.host, record.run_id)


def test_a_step_whose_probe_succeeds_before_it_runs_is_skipped_and_journaled(tmp_path: Path, fake_world: WorldFile) -> None:
    canned(fake_world, {"match": PROBE, "rc": 0})
    events: list[Event] = []
    record = app.start(context(tmp_path, events), app.StartOptions("mailhost", str(probed_plan(tmp_path, fake_world))))
    assert record.phase == Phase.COMPLETED
    assert runs_of(fake_world, "labos-update fetch") == 0  # never run
    assert runs_of(fake_world, PROBE) == 1  # asked once, on the twin
    assert [e["domain"] for e in effects(fake_world, "run") if e["cmd"] == PROBE] == ["mailhost-twin"]
    entries = [e for e in journal(tmp_path, record) if e.get("key") == "upgrade[0]"]
    assert [e["kind"] for e in entries] == ["done"]  # done without a begin: nothing was started
    skipped = skipped_by_probe(entries[0]["outputs"])
    assert skipped == SkippedByProbe(probe=PROBE, probe_rc=0)
    assert entries[0]["outputs"]["skipped"] is True and entries[0]["outputs"]["reason"] == PROBE_SKIP_REASON
    assert record.output("upgrade[0]") == entries[0]["outputs"]
    done = [e for e in events if isinstance(e, StepDone) and e.key == "upgrade[0]"]
    assert len(done) == 1 and done[0].skipped and done[0].reason == PROBE_SKIP_REASON
    assert not any(isinstance(e, StepInDoubt) for e in events)
    assert runs_of(fake_world, "labos-update install") == 2  # the steps without a probe ran


def test_a_step_whose_probe_fails_runs(tmp_path: Path, fake_world: WorldFile) -> None:
    canned(fake_world, {"match": PROBE, "rc": 1})
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(probed_plan(tmp_path, fake_world))))
    assert record.phase == Phase.COMPLETED
    runs = [e["cmd"] for e in effects(fake_world, "run") if e["cmd"] in (PROBE, "labos-update fetch")]
    assert runs == [PROBE, "labos-update fetch"]  # asked first, then run once
    assert record.output("upgrade[0]") == {"rc": 0}
    assert skipped_by_probe(record.output("upgrade[0]")) is None


def test_a_held_retry_probes_the_failed_step_first(tmp_path: Path, fake_world: WorldFile) -> None:
    """The failed step is in doubt on `retry`: its plan probe (after its done-marker) decides, as
    before; a step finished by hand on the twin is not run again."""
    canned(fake_world, {"match": PROBE, "rc": 1}, {"match": "labos-update fetch", "rc": 1, "stdout": "fetch failed"})
    plan = probed_plan(tmp_path, fake_world)
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "upgrade[0]"
    with fake_world.change() as data:  # the operator fetched by hand on the twin: the probe now says done
        data["commands"] = [c for c in data["commands"] if c["match"] not in (PROBE, "labos-update fetch")]
        data["commands"].insert(0, {"match": PROBE, "rc": 0})
    events: list[Event] = []
    record = app.retry(context(tmp_path, events), "mailhost", who="ops")
    assert record.phase == Phase.COMPLETED
    assert runs_of(fake_world, "labos-update fetch") == 1  # only the failed attempt
    assert record.output("upgrade[0]") == {"rc": 0, "probed": True}  # in-doubt semantics, unchanged
    assert [e.already_done for e in events if isinstance(e, StepInDoubt) and e.key == "upgrade[0]"] == [True]


def test_the_run_view_and_the_report_say_skipped_by_probe(tmp_path: Path, fake_world: WorldFile) -> None:
    canned(fake_world, {"match": PROBE, "rc": 0})
    out = io.StringIO()
    view = RunView(Console(file=out, width=200, force_terminal=False, no_color=True), verbose=False)
    record = app.start(app.Context(RunStore(tmp_path / "state"), [view]),
                       app.StartOptions("mailhost", str(probed_plan(tmp_path, fake_world))))
    assert "upgrade[0]: skipped (probe: already done)" in out.getvalue()
    assert figures(record)["skipped (probe: already done)"] == "upgrade[0]"


def test_the_dry_run_names_the_probe(tmp_path: Path, fake_world: WorldFile) -> None:
    _, _, phases = app.dry_run(app.StartOptions("mailhost", str(probed_plan(tmp_path, fake_world))))
    lines = [line for p in phases for line in p.actions]
    assert any("labos-update fetch" in line and f"skipped if `{PROBE}` exits 0 first" in line for line in lines)


def test_a_probe_that_cannot_be_asked_holds_the_run_at_its_step(tmp_path: Path, fake_world: WorldFile) -> None:
    """The connection to the twin is lost every time the probe is asked: the run is held at that
    step (so `skip` and `retry` know which one), never run unprobed; once it answers, retry asks again."""
    canned(fake_world, {"match": PROBE, "cut": 99})
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(probed_plan(tmp_path, fake_world))))
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "upgrade[0]", record.held
    assert runs_of(fake_world, "labos-update fetch") == 0
    assert [e["key"] for e in journal(tmp_path, record) if e["kind"] == "connection_lost"] == ["upgrade[0]"] * 3
    with fake_world.change() as data:
        data["commands"] = [c for c in data["commands"] if c["match"] != PROBE]
        data["commands"].insert(0, {"match": PROBE, "rc": 0})
    record = app.retry(context(tmp_path, []), "mailhost", who="ops")
    assert record.phase == Phase.COMPLETED and runs_of(fake_world, "labos-update fetch") == 0
    assert skipped_by_probe(record.output("upgrade[0]")) == SkippedByProbe(probe=PROBE)
