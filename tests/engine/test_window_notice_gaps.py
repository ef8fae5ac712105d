"""Gaps in the window step's customer notices (review of issue 12):

* a process that dies between fixing `window[N+1]` (a postponement, a window edit) and sending
  its `postponed` notice: the notice is sent at the next call, once;
* a window edit killed between replacing the run's plan copy and refixing the window: the new
  window is still taken at the next call;
* an SMTP server that stays down: the notice backs off (1, 5, 15, 60 minutes, then hourly)
  instead of adding a retry key at every `upgrader run-due`.

In-process runs kill the process with `Killed` (a BaseException nothing in upgrader catches,
like a SIGKILL for the journal); the crash test kills the real CLI at a pause point."""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from upgrader import app, app_due
from upgrader.lab import mailsink
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.crash import Cli
from upgrader.testing.fakes import WorldFile

from tests.engine.test_window_flow import T0, Clock, inbox, kinds, plan_with, smtp_down  # noqa: F401 (fixture)

UTC = dt.timezone.utc
WEEKLY = "window:\n  weekly: {weekday: fri, time: \"12:00\"}\n  duration: 1h\n  timezone: UTC\n"
FAR = "window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n"


class Killed(BaseException):
    """The process dies here (nothing in upgrader catches a BaseException that is not its own)."""


def dies_after(real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Killed

    return wrapper


def journaled(ctx: app.Context, run_id: str, key: str) -> bool:
    return any(e.get("kind") == "done" and e.get("key") == key for e in ctx.store.journal("mailhost", run_id))


def notice_keys(ctx: app.Context, run_id: str) -> list[str]:
    return [k for k in ctx.store.load("mailhost", run_id).outputs if k.startswith("notice.")]


# ------------------------------------------------------------------ the postponed notice after a kill


def test_a_kill_between_postponing_and_telling_sends_the_notice_at_the_next_call(
    tmp_path: Path, fake_world: WorldFile, inbox: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from upgrader.steps import window

    plan = plan_with(tmp_path, fake_world, WEEKLY)
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    clock.now = T0 + dt.timedelta(hours=4)  # the window closed: postpone
    with monkeypatch.context() as m:
        m.setattr(window, "fix_slot", dies_after(window.fix_slot))
        with pytest.raises(Killed):
            app.resume(ctx, "mailhost")
    assert journaled(ctx, record.run_id, "window[1]") and kinds(inbox) == ["announce"]
    clock.now += dt.timedelta(minutes=1)
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.AWAIT_WINDOW
    assert kinds(inbox) == ["announce", "postponed"]  # was: never sent, "customers not told" for good
    app_due.run_due(ctx)
    assert kinds(inbox) == ["announce", "postponed"]  # once
    assert "customers not told" not in (ctx.store.load("mailhost", record.run_id).parked or "")


def edit_window(plan: Path) -> None:
    plan.write_text(plan.read_text().replace("2030-01-04T12:00:00", "2030-01-11T12:00:00"))


@pytest.mark.parametrize("where", ["window_edit.fix_slot", "app.take_plan"])
def test_a_window_edit_killed_midway_is_taken_and_told_at_the_next_call(
    tmp_path: Path, fake_world: WorldFile, inbox: Path, monkeypatch: pytest.MonkeyPatch, where: str  # noqa: F811
) -> None:
    """Killed after refixing the window (before telling the customers), or after the plan copy
    was replaced: the next resume has the new window in force and tells the customers once."""
    import upgrader.window_edit

    plan = plan_with(tmp_path, fake_world, FAR)
    ctx = app.Context(RunStore(tmp_path / "state"), now=Clock(T0))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    edit_window(plan)
    module, name = where.split(".")
    target = upgrader.window_edit if module == "window_edit" else app
    with monkeypatch.context() as m:
        m.setattr(target, name, dies_after(getattr(target, name)))
        with pytest.raises(Killed):
            app.resume(ctx, "mailhost")
    record = app.resume(ctx, "mailhost")
    assert record.phase == Phase.AWAIT_WINDOW and "2030-01-11" in (record.parked or ""), record.parked
    assert record.output("window[1]")["start"].startswith("2030-01-11")
    assert kinds(inbox) == ["announce", "postponed"]
    app.resume(ctx, "mailhost")
    assert kinds(inbox) == ["announce", "postponed"]


def test_crash_between_the_plan_copy_and_the_refix(tmp_path: Path, fake_world: WorldFile, inbox: Path) -> None:  # noqa: F811
    """The real CLI SIGKILLed once the run's plan copy holds the edited window: the resume after
    it has the new window in force, the customers told once."""
    plan = plan_with(tmp_path, fake_world, FAR)
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    started = cli.run("start", "mailhost", "--plan", str(plan))
    assert started.rc == 0 and cli.record()["phase"] == "await_window", started
    edit_window(plan)
    reached = cli.kill_at("after:plan_copy", "resume", "mailhost", reached=tmp_path / "reached")
    assert fnmatch.fnmatchcase(reached, "after:plan_copy")
    done = cli.run("resume", "mailhost")
    assert done.rc == 0, done
    record = cli.record()
    assert record["outputs"]["window[1]"]["start"].startswith("2030-01-11") and "2030-01-11" in record["parked"]
    assert kinds(inbox) == ["announce", "postponed"]


# ------------------------------------------------------------------------------- back-off


def test_a_failing_smtp_server_backs_off_instead_of_growing_the_run(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upgrader run-due` every minute for an hour with SMTP down: a handful of attempts (after 1,
    5, 15, 60 min), not 60; a call before the next one is due writes no notice key; the first
    due call after SMTP is back sends the announcement."""
    smtp_down(monkeypatch)
    plan = plan_with(tmp_path, fake_world, "window: {start: 2026-11-27T14:00:00, duration: 2h, timezone: UTC}\n")
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert notice_keys(ctx, record.run_id) == ["notice.announce"]
    growth = []
    for minute in range(1, 61):
        clock.now = T0 + dt.timedelta(minutes=minute)
        before = len(notice_keys(ctx, record.run_id))
        lines = len(ctx.store.journal("mailhost", record.run_id))
        run_json = (ctx.store.run_dir("mailhost", record.run_id) / "run.json").read_bytes()
        [due] = app_due.run_due(ctx)
        assert due.record is not None and "customers not told" in (due.record.parked or ""), due.record
        growth.append(len(notice_keys(ctx, record.run_id)) - before)
        if not growth[-1]:  # not due: nothing tried, nothing written
            assert len(ctx.store.journal("mailhost", record.run_id)) == lines, minute
            assert (ctx.store.run_dir("mailhost", record.run_id) / "run.json").read_bytes() == run_json, minute
    tried_at = [m for m, g in enumerate(growth, start=1) if g]
    assert tried_at == [1, 6, 21], tried_at  # failures at 0, 1, 6, 21; the next at 81
    assert notice_keys(ctx, record.run_id) == ["notice.announce", *(f"notice.announce.retry[{n}]" for n in (1, 2, 3))]
    failed = ctx.store.load("mailhost", record.run_id).output("notice.announce.retry[3]")
    assert failed["sent"] is False and failed["at"] == (T0 + dt.timedelta(minutes=21)).isoformat()

    port = int(os.environ["UPGRADER_SMTP_PORT"])  # SMTP comes back
    controller = mailsink.start(tmp_path / "inbox", port)
    try:
        clock.now = T0 + dt.timedelta(minutes=80)  # not due yet: nothing tried
        app_due.run_due(ctx)
        assert len(notice_keys(ctx, record.run_id)) == 4
        clock.now = T0 + dt.timedelta(minutes=81)
        [due] = app_due.run_due(ctx)
    finally:
        controller.stop()
    assert due.record is not None and "customers not told" not in (due.record.parked or "")
    assert due.record.output("notice.announce.retry[4]")["sent"] is True
    assert kinds(tmp_path / "inbox") == ["announce"]


def test_retry_due_backs_off_then_hourly() -> None:
    from upgrader.steps.notices import retry_due

    at = dt.datetime(2026, 1, 1, tzinfo=UTC)
    waits = [retry_due({"sent": False, "at": at.isoformat()}, n) for n in range(1, 7)]
    assert [w - at for w in waits if w is not None] == [dt.timedelta(minutes=m) for m in (1, 5, 15, 60, 60, 60)]
    assert retry_due({"sent": False}, 3) is None  # journaled before the time was kept: due at once
