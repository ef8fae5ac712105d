"""`upgrader run-due` (issue 12, points 3 and 8): every host on its own, a summary exit code, silent
with -q when nothing is due, no state growth for a call that does nothing; runs killed mid-way
show as interrupted, killed inside the cutover as URGENT and are resumed at once with an operator
notice; a killed phase is `interrupted` in the report, not `done`."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run

from upgrader import app, app_due, app_status
from upgrader.adapters.factory import build_ports
from upgrader.app_due import DueOutcome
from upgrader.app_status import RunState
from upgrader.lab import mailsink
from upgrader.phases import Phase
from upgrader.plan import Plan
from upgrader.steps.base import Ports
from upgrader.store import RunStore
from upgrader.testing.crash import Cli
from upgrader.testing.fakes import WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
OPEN_AT_NOON = "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n"
FAR_AWAY = "window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n"
ONCALL = "oncall@example.org"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def world_and_plan(tmp_path: Path, name: str, extra: str = "") -> Path:
    world = new_world(production_network="prod-net")
    world["commands"] = list(RELEASE_COMMANDS)
    wf = WorldFile(tmp_path / f"{name}-world.json")
    wf.write(world)
    plan = tmp_path / f"{name}.yml"
    plan.write_text(FAKE_PLAN.format(world=wf.path, keep="1h") + extra)
    return plan


def run_files(state: Path, host: str) -> dict[str, bytes]:
    run_dir = next(p for p in (state / host).iterdir() if p.is_dir())
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = mailsink.start(tmp_path / "inbox", port)
    for name, value in (("HOST", "127.0.0.1"), ("PORT", str(port)), ("HELO", "upgrader.test")):
        monkeypatch.setenv(f"UPGRADER_SMTP_{name}", value)
    try:
        yield tmp_path / "inbox"
    finally:
        controller.stop()


# --------------------------------------------------------------------------------------------- isolation


def test_one_hosts_error_or_bug_does_not_keep_the_others_from_their_cutover(tmp_path: Path) -> None:
    """Three parked runs, their window open: one's plan was edited, one hits a bug (an
    unexpected exception); the third still cuts over, and both others are reported by name."""
    clock = Clock(T0)
    store = RunStore(tmp_path / "state")
    bugs: set[str] = set()

    def ports(plan: Plan, run_id: str) -> Ports:
        if run_id in bugs:
            raise RuntimeError("a bug in the adapter")
        return build_ports(plan, run_id)

    ctx = app.Context(store, now=clock, ports_factory=ports)
    plans = {host: world_and_plan(tmp_path, host, OPEN_AT_NOON) for host in ("aaa-edited", "bbb-bug", "ccc-good")}
    ids = {host: app.start(ctx, app.StartOptions(host, str(plan))).run_id for host, plan in plans.items()}
    plans["aaa-edited"].write_text(plans["aaa-edited"].read_text().replace("keep_old_for: 1h", "keep_old_for: 2h"))  # not a safe edit
    bugs.add(ids["bbb-bug"])
    clock.now = T0 + dt.timedelta(hours=2, minutes=5)  # in the window

    logs: list[BaseException] = []

    def bug_log(exc: BaseException) -> Path:
        logs.append(exc)
        return tmp_path / "debug.log"

    results = {r.host: r for r in app_due.run_due(ctx, bug_log=bug_log)}
    assert results["aaa-edited"].outcome is DueOutcome.ERROR and "edited in fields a running run cannot take" in (results["aaa-edited"].message or "")
    assert results["bbb-bug"].outcome is DueOutcome.ERROR and "RuntimeError: a bug in the adapter" in (results["bbb-bug"].message or "")
    assert results["bbb-bug"].debug_log == tmp_path / "debug.log" and isinstance(logs[0], RuntimeError)
    good = results["ccc-good"]
    assert good.outcome is DueOutcome.RAN and good.record is not None and good.record.phase == Phase.COMPLETED


def test_cli_exit_code_and_errors_by_host_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    for host in ("aaa", "bbb"):
        code, out = run(capsys, "--state-dir", state, "start", host, "--plan", str(world_and_plan(tmp_path, host, FAR_AWAY)))
        assert code == 0 and "parked" in out, out
    code, out = run(capsys, "--state-dir", state, "run-due")
    assert code == 0, out
    assert out.count("await_window — parked: window opens 2030-01-04") == 2, out  # one line per host
    (tmp_path / "aaa.yml").write_text((tmp_path / "aaa.yml").read_text().replace("keep_old_for: 1h", "keep_old_for: 2h"))
    code, out = run(capsys, "--state-dir", state, "-q", "run-due")
    assert code == 7, out  # a host needs an operator
    assert "aaa: error: the plan" in out and "edited in fields a running run cannot take" in out and "hint:" in out, out
    assert "bbb" not in out, out  # nothing due there: -q says nothing


def test_run_due_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "run-due", "--help")
    assert code == 0 and "Exit: 0" in out and "1  a run it resumed failed" in out and "7  a host needs an operator" in out
    assert "await_window" in out and "a failed cleanup" in out, out


# --------------------------------------------------------------------------------------------- no-op calls


def test_nothing_due_prints_nothing_with_q_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(world_and_plan(tmp_path, "m", FAR_AWAY)))
    assert code == 0, out
    before = run_files(state, "mailhost")
    for _ in range(3):  # cron, every minute
        code, out = run(capsys, "--state-dir", str(state), "-q", "run-due")
        assert code == 0 and out == "", out
    after = run_files(state, "mailhost")
    assert after == before  # run.json (no new `parked` row), journal.jsonl, events.jsonl: not a byte more
    record = json.loads(after["run.json"])
    assert [t["status"] for t in record["timings"] if t["phase"] == "await_window"] == ["parked"]


def test_a_park_with_news_is_saved_once(tmp_path: Path, inbox: Path) -> None:
    """A reminder sent while parked is news (run.json is saved); the call after it is not."""
    plan = world_and_plan(tmp_path, "m", OPEN_AT_NOON + "announce:\n  sender: ops@example.org\n"
                                            "  to: [customers@example.com]\n  reminder_before: 30m\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    clock.now = T0 + dt.timedelta(minutes=95)  # the reminder is due
    [due] = app_due.run_due(ctx)
    assert due.outcome is DueOutcome.RAN and "notice.reminder[0]" in json.loads(run_files(tmp_path / "state", "mailhost")["run.json"])["outputs"]
    saved = run_files(tmp_path / "state", "mailhost")
    [due] = app_due.run_due(ctx)
    assert due.outcome is DueOutcome.IDLE and run_files(tmp_path / "state", "mailhost") == saved


# --------------------------------------------------------------------------------------------- interrupted


def cli_for(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state", Path(os.environ["UPGRADER_LOCK_DIR"]))


def test_killed_mid_upgrade_is_interrupted_listed_not_resumed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cli = cli_for(tmp_path)
    cli.kill_at("begin:clone.define", "start", "mailhost", "--plan", str(world_and_plan(tmp_path, "m")), reached=tmp_path / "r")
    [status] = app_status.states(app.Context(RunStore(cli.state)), "mailhost")
    assert status.state is RunState.INTERRUPTED and status.killed, status  # old code: "active"
    code, out = run(capsys, "--state-dir", str(cli.state), "status")
    assert "interrupted" in out and "`upgrader resume mailhost` continues" in out and "active" not in out, out
    code, out = run(capsys, "--state-dir", str(cli.state), "status", "mailhost")
    assert "│ interrupted │" in out and "running" not in out, out  # the dead phase is not shown `running`
    assert "interrupted: its process was killed in clone" in out, out
    journal = run_files(cli.state, "mailhost")["journal.jsonl"]
    code, out = run(capsys, "--state-dir", str(cli.state), "-q", "run-due")
    assert code == 7 and "mailhost: interrupted in clone" in out and "upgrader resume mailhost" in out, out
    assert run_files(cli.state, "mailhost")["journal.jsonl"] == journal  # not resumed

    done = cli.run("resume", "mailhost")
    assert done.rc == 0, done
    timings = json.loads(run_files(cli.state, "mailhost")["run.json"])["timings"]
    clone = [t["status"] for t in timings if t["phase"] == "clone"]
    assert clone == ["interrupted", "done"], timings  # old code: ["done", "done"], the dead time counted as work


def test_killed_in_cutover_is_urgent_and_run_due_resumes_it_and_tells_the_operators(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, inbox: Path) -> None:
    cli = cli_for(tmp_path)
    plan = world_and_plan(tmp_path, "m", f"operator:\n  email: [{ONCALL}]\n  sender: upgrader@example.org\n")
    cli.kill_at("enter:cutover", "start", "mailhost", "--plan", str(plan), reached=tmp_path / "r")
    code, out = run(capsys, "--state-dir", str(cli.state), "status", "--json")
    [entry] = json.loads(out)["runs"]
    assert entry["state"] == "urgent" and entry["phase"] == "cutover" and entry["holder"]["alive"] is False, entry
    code, out = run(capsys, "--state-dir", str(cli.state), "status", "mailhost")
    assert "URGENT:" in out and "prod may be down" in out, out

    code, out = run(capsys, "--state-dir", str(cli.state), "-q", "run-due")
    assert code == 0 and "mailhost: URGENT" in out and "now completed" in out, out
    notices = [r for r in mailsink.received(inbox) if r.kind == "urgent"]
    assert len(notices) == 1 and notices[0].message["To"] == ONCALL
    assert "URGENT: mailhost was interrupted in cutover" in str(notices[0].message["Subject"])
    assert "resume" in notices[0].message.get_content()
    code, out = run(capsys, "--state-dir", str(cli.state), "-q", "run-due")
    assert code == 0 and out == "" and len([r for r in mailsink.received(inbox) if r.kind == "urgent"]) == 1


def test_a_parked_run_killed_in_the_middle_of_its_decommission_is_interrupted(tmp_path: Path, fake_plan: Path) -> None:
    """run.json still says parked (a resume from a park saves nothing until it has news): the dead
    lock holder and the journal's open step tell the truth."""
    cli = cli_for(tmp_path)
    assert cli.run("start", "mailhost", "--plan", str(fake_plan)).rc == 0
    ctx = app.Context(RunStore(cli.state))
    assert app_status.states(ctx, "mailhost")[0].state is RunState.PARKED
    cli.kill_at("begin:decommission.*", "decommission", "mailhost", "--yes", reached=tmp_path / "r")
    [status] = app_status.states(ctx, "mailhost")
    assert status.record.parked and status.state is RunState.INTERRUPTED, status
    assert "in the middle of decommission." in (status.hint or "")
    [listed] = app_status.history_states(ctx)
    assert listed.state is RunState.INTERRUPTED
    assert cli.run("decommission", "mailhost", "--yes").rc == 0
    assert app_status.states(ctx, "mailhost")[0].state is RunState.FINISHED


def test_a_failure_after_a_park_keeps_its_timing_row(tmp_path: Path, fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume from a park appends its phase's row only once it does more than park again: a
    step that fails there (the decommission) still gets its `failed` row."""
    from upgrader.errors import InfraError
    from upgrader.testing.fakes import FakeHypervisor

    ctx = app.Context(RunStore(tmp_path / "state"))
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED and record.parked

    def broken(self: object, name: str) -> None:
        raise InfraError("libvirt went away")

    monkeypatch.setattr(FakeHypervisor, "flatten", broken)
    record = app.decommission(ctx, "mailhost")
    assert record.cleanup_error is not None
    assert [(t.phase, t.status) for t in record.timings[-2:]] == [(Phase.COMPLETED, "parked"), (Phase.COMPLETED, "failed")]
    assert [(t.phase.value, t.status) for t in RunStore(tmp_path / "state").load("mailhost", record.run_id).timings[-1:]] == [("completed", "failed")]


# --------------------------------------------------------------------------------------------- errors


def test_a_failed_decommission_is_an_error_left_to_an_operator_not_retried_every_minute(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decommission run-due starts fails (libvirt away): the run is `error` (old code: `parked`,
    because a failed decommission stays parked in `completed`), and the next run-due lists it for an
    operator (exit 7) instead of trying it again (old code: tried at every call)."""
    from upgrader.cli.due import exit_code
    from upgrader.errors import InfraError
    from upgrader.testing.fakes import FakeHypervisor

    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(world_and_plan(tmp_path, "m"))))
    assert record.phase == Phase.COMPLETED and record.parked
    tries: list[str] = []

    def broken(self: object, name: str) -> None:
        tries.append(name)
        raise InfraError("libvirt went away")

    monkeypatch.setattr(FakeHypervisor, "flatten", broken)
    clock.now = T0 + dt.timedelta(hours=2)  # keep_old_for (1h) passed: the decommission is due
    [due] = app_due.run_due(ctx)
    assert due.outcome is DueOutcome.RAN and due.failed and exit_code([due]) == 1 and len(tries) == 1
    [status] = app_status.states(ctx, "mailhost")
    assert status.state is RunState.ERROR, status  # old code: parked
    assert "the decommission failed: libvirt went away" in (status.hint or "") and "upgrader resume mailhost" in (status.hint or "")
    journal = run_files(tmp_path / "state", "mailhost")["journal.jsonl"]
    for _ in range(2):  # cron, every minute
        [due] = app_due.run_due(ctx)
        assert due.outcome is DueOutcome.LEFT and due.state is RunState.ERROR and exit_code([due]) == 7
    assert len(tries) == 1 and run_files(tmp_path / "state", "mailhost")["journal.jsonl"] == journal  # old code: tried again each time
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "-q", "run-due")
    assert code == 7 and "mailhost: error in completed" in out and "the decommission failed" in out, out
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "status", "--json")
    assert json.loads(out)["runs"][0]["state"] == "error", out


# --------------------------------------------------------------------------------------------- plan edits


EDITS = {
    "unsafe": lambda text: text.replace("keep_old_for: 1h", "keep_old_for: 2h"),  # not a safe field
    "broken": lambda text: text + "  oops: [not yaml\n",  # no longer parses
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_urgent_run_comes_back_whatever_happened_to_the_plan_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, inbox: Path, edit: str) -> None:
    """Killed in the final sync (prod's services stopped), then the plan file is edited: run-due
    still tells the operators and brings the run back, from the run's copy, saying the edit was
    ignored (old code: refused, exit 7, the run still URGENT and no notice sent)."""
    cli = cli_for(tmp_path)
    plan = world_and_plan(tmp_path, "m", f"operator:\n  email: [{ONCALL}]\n  sender: upgrader@example.org\n")
    cli.kill_at("begin:cutover.final_sync", "start", "mailhost", "--plan", str(plan), reached=tmp_path / "r")
    plan.write_text(EDITS[edit](plan.read_text()))
    code, out = run(capsys, "--state-dir", str(cli.state), "run-due")
    assert code == 0 and "mailhost: URGENT" in out and "now completed" in out, out
    assert ("ignored, using the plan the run started with" if edit == "unsafe" else "no longer parses: using the run's copy") in out, out
    assert [r.message["To"] for r in mailsink.received(inbox) if r.kind == "urgent"] == [ONCALL]
    assert cli.record()["phase"] == "completed"


def test_resume_of_an_urgent_run_works_from_the_copy(tmp_path: Path) -> None:
    """`upgrader resume HOST` typed by an operator for a run killed in the cutover: prod may be
    down, an edit of the plan file does not keep it so (old code: refused, exit 2)."""
    cli = cli_for(tmp_path)
    plan = world_and_plan(tmp_path, "m")
    cli.kill_at("begin:cutover.final_sync", "start", "mailhost", "--plan", str(plan), reached=tmp_path / "r")
    plan.write_text(EDITS["unsafe"](plan.read_text()))
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    assert "keep_old_for: ignored" in done.out, done


def test_the_decommission_run_due_starts_works_from_the_copy(tmp_path: Path) -> None:
    """keep_old_for passed and the plan file was edited elsewhere since: the decommission goes on
    from the run's copy, as `upgrader decommission` does (old code: refused at every call)."""
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    plan = world_and_plan(tmp_path, "m")
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    plan.write_text(plan.read_text().replace("max_passes: 5", "max_passes: 6"))  # not a safe field
    clock.now = T0 + dt.timedelta(hours=2)
    [due] = app_due.run_due(ctx)
    assert due.outcome is DueOutcome.RAN and due.record is not None and due.record.phase == Phase.DECOMMISSIONED, due


# --------------------------------------------------------------------------------------------- await_window


def open_window_now() -> str:
    """A window that opened 10 minutes ago (the CLI runs on the real clock)."""
    start = (dt.datetime.now(UTC) - dt.timedelta(minutes=10)).replace(microsecond=0, tzinfo=None)
    return f"window: {{start: {start.isoformat()}, duration: 2h, timezone: UTC}}\n"


def test_a_run_due_killed_in_its_fresh_presync_is_resumed_by_the_next(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The window is open, run-due begins the pre-sync again and is killed there: the run is
    `interrupted` in await_window, and the next run-due goes on with it (its own pre-window work,
    read-only to prod) and cuts over in the window (old code: listed, exit 7 at every call, the
    window lost)."""
    cli = cli_for(tmp_path)
    plan = world_and_plan(tmp_path, "m", open_window_now() + "approval: required\n")
    assert cli.run("start", "mailhost", "--plan", str(plan)).rc == 0  # parks: waiting for approval
    assert cli.run("approve", "mailhost").rc == 0
    point = cli.kill_at("begin:presync.pass*", "run-due", reached=tmp_path / "r")
    [status] = app_status.states(app.Context(RunStore(cli.state)), "mailhost")
    assert status.state is RunState.INTERRUPTED and status.record.phase == Phase.AWAIT_WINDOW, (point, status)
    code, out = run(capsys, "--state-dir", str(cli.state), "-q", "run-due")
    assert code == 0 and "mailhost: completed" in out, out
    rounds = [e.get("outputs", {}).get("round") for e in map(json.loads, run_files(cli.state, "mailhost")["journal.jsonl"].splitlines())
              if e.get("kind") == "done" and str(e.get("key", "")).startswith("presync.pass")]
    assert "window[0]" in rounds, rounds  # the fresh pre-sync was done (again), then the cutover


@pytest.mark.parametrize(("error", "code"), [("infra", 5), ("step", 1)])
def test_decommission_with_libvirt_unreachable_exits_5(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, error: str, code: int) -> None:
    """A cleanup step that failed because libvirt (or SSH) did not answer: exit 5, as documented
    for infrastructure unreachable (old code: 1, like any cleanup failure, which still exits 1)."""
    from upgrader.errors import InfraError, StepFailed
    from upgrader.testing.fakes import FakeHypervisor

    state = str(tmp_path / "state")
    rc, out = run(capsys, "--state-dir", state, "start", "mailhost", "--plan", str(world_and_plan(tmp_path, "m")))
    assert rc == 0 and "parked" in out, out

    def broken(self: object, name: str) -> None:
        raise InfraError("cannot connect to libvirt") if error == "infra" else StepFailed("qemu-img said no")

    monkeypatch.setattr(FakeHypervisor, "flatten", broken)
    rc, out = run(capsys, "--state-dir", state, "decommission", "mailhost", "--yes")
    assert rc == code, out
    assert app_status.states(app.Context(RunStore(tmp_path / "state")), "mailhost")[0].state is RunState.ERROR
