"""Windows and customer notices through the engine: fakes behind the VM ports, a real SMTP
server (aiosmtpd, 127.0.0.1 only) behind the notifier, a controllable clock."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest

from rich.console import Console

from upgrader import app, app_due, app_status, ui
from upgrader.lab import mailsink
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN, effects

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=UTC)  # a Friday
ANNOUNCE = """\
announce:
  sender: ops@example.org
  to: [customers@example.com]
  reminder_before: 30m
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    port = free_port()
    controller = mailsink.start(tmp_path / "inbox", port)
    monkeypatch.setenv("UPGRADER_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("UPGRADER_SMTP_PORT", str(port))
    monkeypatch.setenv("UPGRADER_SMTP_HELO", "upgrader.test")
    try:
        yield tmp_path / "inbox"
    finally:
        controller.stop()


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def plan_with(tmp_path: Path, world: WorldFile, window: str, keep: str = "1h") -> Path:
    path = tmp_path / "window.yml"
    path.write_text(FAKE_PLAN.format(world=world.path, keep=keep) + window + ANNOUNCE)
    return path


def kinds(inbox: Path) -> list[str]:
    return [r.kind for r in mailsink.received(inbox)]


def test_park_announce_remind_cut_over_done(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked and "window opens" in record.parked
    assert kinds(inbox) == ["announce"]
    announce = mailsink.received(inbox)[0]
    cal = icalendar.Calendar.from_ical(announce.invite)
    event = next(c for c in cal.walk("VEVENT"))
    assert str(cal["METHOD"]) == "PUBLISH" and int(event["SEQUENCE"]) == 0
    assert event["DTSTART"].dt == dt.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert event["DTEND"].dt == dt.datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
    assert str(event["UID"]) == f"{record.run_id}.mailhost@upgrader"
    parts = {p.get_content_type() for p in announce.message.walk()}
    assert {"text/plain", "text/html", "text/calendar"} <= parts

    clock.now = T0 + dt.timedelta(minutes=30)  # before the window, before the reminder: nothing
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.AWAIT_WINDOW
    assert kinds(inbox) == ["announce"] and effects(fake_world, "set_link") == []

    clock.now = T0 + dt.timedelta(minutes=95)  # reminder due (30 min before 12:00)
    app_due.run_due(ctx)
    app_due.run_due(ctx)  # twice: still one reminder
    assert kinds(inbox) == ["announce", "reminder"]

    clock.now = T0 + dt.timedelta(hours=2, minutes=5)  # in the window
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.COMPLETED
    assert kinds(inbox) == ["announce", "reminder", "done"]
    assert len(effects(fake_world, "move_nic")) == 1


def test_window_missed_is_postponed_with_higher_sequence(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:
    plan = plan_with(tmp_path, fake_world, "window:\n  weekly: {weekday: fri, time: \"12:00\"}\n  duration: 1h\n  timezone: Europe/Berlin\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW
    clock.now = T0 + dt.timedelta(hours=4)  # the window (11:00-12:00 UTC) closed before anyone resumed
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.parked and due.record.parked.startswith("postponed")
    received = mailsink.received(inbox)
    assert [r.kind for r in received] == ["announce", "postponed"]
    first = icalendar.Calendar.from_ical(received[0].invite).walk("VEVENT")[0]
    moved = icalendar.Calendar.from_ical(received[1].invite).walk("VEVENT")[0]
    assert moved["UID"] == first["UID"] and int(moved["SEQUENCE"]) == 1
    assert moved["DTSTART"].dt - first["DTSTART"].dt == dt.timedelta(days=7)
    assert effects(fake_world, "set_link") == []  # no late cutover


def test_too_little_left_of_the_window_postpones(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:
    plan = plan_with(tmp_path, fake_world, "window:\n  weekly: {weekday: fri, time: \"12:00\"}\n  duration: 1h\n  timezone: Europe/Berlin\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    clock.now = dt.datetime(2026, 11, 27, 11, 59, 50, tzinfo=UTC)  # 10 s left, the cutover needs 30+ s
    [due] = app_due.run_due(ctx)
    assert due.record is not None and "only 0:00:10 left" in (due.record.parked or "")
    assert kinds(inbox) == ["announce", "postponed"]


def test_now_needs_yes_and_is_journaled(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n")
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    with pytest.raises(app.InputError, match="--yes"):
        app.start(ctx, app.StartOptions("mailhost", str(plan), now=True))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan), now=True, yes=True))
    assert record.phase == Phase.COMPLETED
    entries = ctx.store.journal("mailhost", record.run_id)
    assert any(e.get("kind") == "operator" and e.get("action") == "now" and e.get("confirmed") for e in entries)
    assert kinds(inbox) == ["announce", "done"]


def test_approval_gate(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:
    plan = plan_with(tmp_path, fake_world, "approval: required\nwindow: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n")
    clock = Clock(dt.datetime(2026, 11, 27, 12, 5, tzinfo=UTC))
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.parked and "approve" in record.parked
    app.approve(ctx, "mailhost", "alice")
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.COMPLETED
    approval = next(e for e in ctx.store.journal("mailhost", record.run_id) if e.get("key") == "approval")
    assert approval["outputs"]["by"] == "alice"


def smtp_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPGRADER_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("UPGRADER_SMTP_PORT", str(free_port()))  # nobody listens
    monkeypatch.setenv("UPGRADER_SMTP_HELO", "upgrader.test")
    monkeypatch.setattr("upgrader.steps.notices.SEND_ATTEMPTS", 2)
    monkeypatch.setattr("upgrader.steps.notices.SEND_MAX_WAIT", 0.01)


def announce_attempts(ctx: app.Context, run_id: str) -> list[tuple[str, object]]:
    return [(e["key"], e["outputs"].get("sent")) for e in ctx.store.journal("mailhost", run_id)
            if e.get("kind") == "done" and str(e.get("key", "")).startswith("notice.announce")]


def test_a_failed_announcement_is_retried_and_the_cutover_waits_for_it(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMTP is down: the announcement is journaled not sent, tried again by run-due, the
    cutover waits in the window and `status` says the customers were not told; once SMTP is
    back the announcement goes out once and the run cuts over."""
    smtp_down(monkeypatch)
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T12:00:00, duration: 2h, timezone: UTC}\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and "customers not told" in (record.parked or "")
    assert announce_attempts(ctx, record.run_id) == [("notice.announce", False)]
    clock.now = T0 + dt.timedelta(hours=2, minutes=5)  # in the window, SMTP still down
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.AWAIT_WINDOW
    assert (due.record.parked or "").startswith("customers not told") and effects(fake_world, "set_link") == []
    assert announce_attempts(ctx, record.run_id) == [("notice.announce", False), ("notice.announce.retry[1]", False)]
    console = Console(record=True, width=200)
    ui.status_table(console, app_status.states(ctx, "mailhost"))
    assert "customers not told" in console.export_text()

    port = int(os.environ["UPGRADER_SMTP_PORT"])  # SMTP comes back on the same port
    controller = mailsink.start(tmp_path / "inbox", port)
    try:
        clock.now += dt.timedelta(minutes=5)  # the second failure backs off 5 minutes (steps/notices.py)
        [due] = app_due.run_due(ctx)
        time.sleep(0.2)
    finally:
        controller.stop()
    assert due.record is not None and due.record.phase == Phase.COMPLETED
    assert kinds(tmp_path / "inbox") == ["announce", "done"]
    assert announce_attempts(ctx, record.run_id)[-1] == ("notice.announce.retry[2]", True)
    console = Console(record=True, width=200)
    ui.status_table(console, app_status.states(ctx, "mailhost"))
    assert "customers not told" not in console.export_text()


def test_a_failed_announcement_postpones_when_the_window_closes(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_down(monkeypatch)
    plan = plan_with(tmp_path, fake_world, "window:\n  weekly: {weekday: fri, time: \"12:00\"}\n  duration: 1h\n  timezone: UTC\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    clock.now = T0 + dt.timedelta(hours=4)  # the window closed, the customers never told
    [due] = app_due.run_due(ctx)
    assert due.record is not None and (due.record.parked or "").startswith("postponed")
    assert effects(fake_world, "set_link") == []


def test_announce_required_false_cuts_over_untold_and_status_says_so(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_down(monkeypatch)
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T09:00:00, duration: 2h, timezone: UTC}\n")
    plan.write_text(plan.read_text() + "  required: false\n")
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.COMPLETED
    assert record.output("notice.announce")["sent"] is False
    console = Console(record=True, width=200)
    ui.report(console, record)
    ui.status_table(console, app_status.states(ctx, "mailhost"))
    text = console.export_text()
    assert "customers: not told" in text and "customers not told" in text


def test_killed_right_after_a_send_does_not_send_it_twice(tmp_path: Path, fake_world: WorldFile) -> None:
    """The SMTP server SIGKILLs the orchestrator as the message arrives — before the client saw
    250 and before the journal said done. The resumed run must not send it again."""
    plan = plan_with(tmp_path, fake_world, "window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n")
    victim: list[subprocess.Popen[str]] = []
    port = free_port()

    def kill(_: EmailMessage) -> None:
        if victim and victim[0].poll() is None:
            victim[0].send_signal(signal.SIGKILL)

    controller = mailsink.start(tmp_path / "inbox", port, on_message=kill)
    env = {**os.environ, "UPGRADER_SMTP_HOST": "127.0.0.1", "UPGRADER_SMTP_PORT": str(port), "UPGRADER_SMTP_HELO": "t"}
    cmd = [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(tmp_path / "state"), "-q"]
    try:
        victim.append(subprocess.Popen([*cmd, "start", "mailhost", "--plan", str(plan)], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        victim[0].communicate(timeout=120)
        assert victim[0].returncode == -signal.SIGKILL
        done = subprocess.run([*cmd, "resume", "mailhost"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(0.2)
        assert kinds(tmp_path / "inbox") == ["announce"]
        assert "not sent again" in done.stdout
    finally:
        controller.stop()


# ------------------------------------------------------------------------------- approval


def plan_without_announce(tmp_path: Path, world: WorldFile, extra: str) -> Path:
    path = tmp_path / "approval.yml"
    path.write_text(FAKE_PLAN.format(world=world.path, keep="1h") + extra)
    return path


def test_approval_without_a_window_parks_until_approved(tmp_path: Path, fake_world: WorldFile) -> None:
    """playbooks/linux-debian.yml's case: `approval: required` and no window. The run must not
    cut over before `upgrader approve`; then a resume pre-syncs again and cuts over."""
    plan = plan_without_announce(tmp_path, fake_world, "approval: required\n")
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and (record.parked or "").startswith("waiting for approval")
    assert effects(fake_world, "set_link") == []
    [due] = app_due.run_due(ctx)  # cron: still not approved
    assert due.record is not None and due.record.phase == Phase.AWAIT_WINDOW and effects(fake_world, "set_link") == []
    approved = app.approve(ctx, "mailhost", "alice")
    assert "approved by alice" in (approved.parked or "")
    record = app.resume(ctx, "mailhost")
    assert record.phase == Phase.COMPLETED
    assert record.output("await_window")["decision"] == "approved"
    assert record.output("await_window")["refresh"]["round"] == "approved"


def test_now_never_skips_a_required_approval(tmp_path: Path, fake_world: WorldFile) -> None:
    """`resume --now --yes` on a run waiting for its window and its approval: it waits for the
    approval; once approved, it cuts over at once (before the window)."""
    plan = plan_without_announce(tmp_path, fake_world, "approval: required\n"
                                 "window: {start: 2026-11-30T12:00:00, duration: 1h, timezone: UTC}\n")
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert (record.parked or "").startswith("waiting for approval")
    record = app.resume(ctx, "mailhost", now=True, yes=True)
    assert record.phase == Phase.AWAIT_WINDOW and (record.parked or "").startswith("waiting for approval")
    assert effects(fake_world, "set_link") == []
    app.approve(ctx, "mailhost", "alice")
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.COMPLETED  # days before the window: --now
    assert due.record.output("await_window")["decision"] == "now (operator)"


def test_start_now_with_approval_waits_for_it(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = plan_without_announce(tmp_path, fake_world, "approval: required\n")
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan), now=True))
    assert record.phase == Phase.AWAIT_WINDOW and (record.parked or "").startswith("waiting for approval")
    app.approve(ctx, "mailhost", "bob")
    assert app.resume(ctx, "mailhost").phase == Phase.COMPLETED


@pytest.mark.parametrize(("extra", "says", "never"), [
    ("", ["cut over right after pre-sync"], ["approve"]),
    ("approval: required\n", ["park until `upgrader approve HOST`", "pre-sync again", "`--now` does not skip"], ["right after"]),
    ("window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n" + ANNOUNCE,
     ["fix the next window", "pre-sync again until the passes converge", "the cutover waits until the customers are told"],
     ["approve"]),
    ("approval: required\nwindow: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n" + ANNOUNCE + "  required: false\n",
     ["wait for `upgrader approve HOST`", "does not wait for it (announce.required: false)"], ["right after"]),
])
def test_the_dry_run_says_what_the_window_step_does(tmp_path: Path, fake_world: WorldFile, extra: str, says: list[str],
                                                    never: list[str]) -> None:
    plan = plan_without_announce(tmp_path, fake_world, extra)
    _, _, phases = app.dry_run(app.StartOptions("mailhost", str(plan)))
    text = "\n".join(line for p in phases if p.phase == Phase.AWAIT_WINDOW for line in p.actions)
    for words in says:
        assert words in text, text
    for words in never:
        assert words not in text, text


def test_announce_without_a_window_is_a_plan_error(tmp_path: Path, fake_world: WorldFile) -> None:
    from upgrader.errors import PlanError
    from upgrader.plan import load_plan

    plan = plan_without_announce(tmp_path, fake_world, "approval: required\n" + ANNOUNCE)
    with pytest.raises(PlanError) as caught:
        load_plan(plan)
    [line] = caught.value.problems
    assert line.startswith(f"{plan}:40:3: announce: an announcement needs a window"), line


# ------------------------------------------------------------------- pre-sync when the window opens


def prod_mail(world: WorldFile, count: int, tag: str = "parked") -> None:
    """Clients deliver `count` mails to prod while the run is parked."""
    with world.change() as data:
        guest = data["guests"][data["domains"]["mailhost"]["guest"]]
        guest["mail"].extend(f"{tag}-{i}" for i in range(count))


def test_the_window_opening_presyncs_again_and_decides_with_the_new_forecast(
    tmp_path: Path, fake_world: WorldFile, inbox: Path
) -> None:
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    parked_passes = sorted(k for k in ctx.store.load("mailhost", record.run_id).outputs if k.startswith("presync.pass["))
    prod_mail(fake_world, 300)  # days of mail while parked
    clock.now = T0 + dt.timedelta(hours=2, minutes=5)
    [due] = app_due.run_due(ctx)
    record = due.record
    assert record is not None and record.phase == Phase.COMPLETED
    passes = {k: v for k, v in record.outputs.items() if k.startswith("presync.pass[")}
    fresh = {k: v for k, v in passes.items() if k not in parked_passes}
    assert fresh, "no pre-sync pass when the window opened"
    first = min(fresh, key=lambda k: int(k[13:-1]))
    assert int(first[13:-1]) == len(parked_passes) + 1  # the numbering goes on
    assert fresh[first]["files"] == 300 and all(v["round"] == "window[0]" for v in fresh.values())
    assert record.output("cutover.final_sync")["files"] == 0  # the new mail went before the quiesce
    decision = record.output("await_window")
    forecast = decision["forecast"]
    last = max(passes, key=lambda k: int(k[13:-1]))
    assert forecast["last_pass_key"] == last
    assert forecast["last_pass"] == round(passes[last]["seconds"] + passes[last]["close_seconds"], 3)  # not its set-up
    assert forecast["quiesce"] == record.output("presync.rehearse.quiesce")["seconds"]
    assert forecast["service_start"] == record.output("presync.rehearse.service_start")["seconds"]
    assert forecast["estimated"] == ["takeover"] and forecast["takeover"] > 0
    assert decision["refresh"] == {"round": "window[0]", "passes": len(fresh)}


def test_the_forecast_takes_pass_10_not_pass_9() -> None:
    """Pass keys sorted as strings put presync.pass[9] after presync.pass[10]."""
    from types import SimpleNamespace

    from upgrader.steps.notices import forecast_seconds
    from upgrader.testing.scenario import FAKE_PLAN as TEXT
    from upgrader.plan import parse_plan

    plan = parse_plan(TEXT.format(world="/nonexistent", keep="1h"), "p.yml")
    outputs = {f"presync.pass[{n}]": {"files": 1, "bytes": 1, "seconds": 1.0} for n in range(1, 10)}
    outputs["presync.pass[10]"] = {"files": 1, "bytes": 1, "seconds": 100.0}
    ctx = SimpleNamespace(plan=plan, record=SimpleNamespace(outputs=outputs), journal=SimpleNamespace(done=outputs))
    assert (forecast_seconds(ctx) or 0) >= 100.0  # type: ignore[arg-type]


def test_cli_approve_and_status_for_a_plan_without_a_window(tmp_path: Path, fake_world: WorldFile,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's view: `start` says it waits for approval, `status` shows the run parked,
    `approve` says what comes next without promising a window, `resume` cuts over."""
    from upgrader.cli.main import main

    def cli(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as info:
            main(["--state-dir", str(tmp_path / "state"), *args])
        out = capsys.readouterr()
        return int(info.value.code or 0), out.out + out.err

    plan = plan_without_announce(tmp_path, fake_world, "approval: required\n")
    rc, out = cli("start", "mailhost", "--plan", str(plan))
    assert rc == 0 and "waiting for approval" in out, out
    rc, out = cli("approve", "mailhost", "--by", "alice")
    assert rc == 0 and "approved by alice" in out and "upgrader resume mailhost" in out, out
    assert "cuts over in its window" not in out  # the plan has none
    rc, out = cli("resume", "mailhost")
    assert rc == 0 and "completed" in out, out
