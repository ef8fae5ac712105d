"""await_window: fix the cutover window, tell customers, and wait for it.

The window in use is journaled as `window[N]` (N = its iCalendar SEQUENCE: 0, then +1 for every
postponement). Each call of the step (a start, a resume, `upgrader run-due`) looks at the clock:
  * before the window: send the reminder once it is due, then park (the process exits);
  * in the window, with room for the forecast downtime: cut over;
  * window closed, or too little of it left: postpone to the next window, tell customers, park.
`--now --yes` cuts over at once; the operator's override is in the journal.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from upgrader.notify import Kind
from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.notices import forecast_seconds, tell
from upgrader.steps.operator_notice import APPROVAL_KEY, approval_event, tell_operator
from upgrader.windows import Slot, describe, next_slot
from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import Plan

# the forecast is a measurement of one pass; leave room for a slower final pass and the takeover
FORECAST_FACTOR = 1.5
FORECAST_SLACK = dt.timedelta(seconds=30)


def current_slot(ctx: StepContext) -> tuple[int, Slot] | None:
    fixed = [(int(k[7:-1]), v) for k, v in ctx.journal.done.items() if k.startswith("window[") and v.get("start")]
    if not fixed:
        return None
    seq, data = max(fixed)
    return seq, Slot(dt.datetime.fromisoformat(data["start"]), dt.datetime.fromisoformat(data["end"]))


def fix_slot(ctx: StepContext, seq: int, slot: Slot, why: str) -> None:
    ctx.once(f"window[{seq}]", f"window {seq}: {slot.start.isoformat(timespec='minutes')} ({why})",
             lambda _: {"start": slot.start.isoformat(), "end": slot.end.isoformat(), "why": why})


def needed(ctx: StepContext) -> dt.timedelta:
    forecast = forecast_seconds(ctx) or 0.0
    return dt.timedelta(seconds=forecast * FORECAST_FACTOR) + FORECAST_SLACK


def local(ctx: StepContext, moment: dt.datetime) -> str:
    from zoneinfo import ZoneInfo

    assert ctx.plan.window is not None
    return moment.astimezone(ZoneInfo(ctx.plan.window.timezone)).strftime("%Y-%m-%d %H:%M %Z")


class AwaitWindow:
    phase = Phase.AWAIT_WINDOW

    def describe(self, plan: "Plan") -> list[str]:
        if plan.window is None:
            return ["no window in the plan: cut over right after pre-sync"]
        lines = [f"fix the next window ({describe(plan.window)}) and park until it opens; `upgrader run-due` resumes it"]
        if plan.announce:
            lines.append(f"tell {', '.join(plan.announce.to)}: announcement now, reminder {format_duration(plan.announce.reminder_before)} before")
        if plan.approval == "required":
            lines.append("wait for `upgrader approve HOST`" + (" (the operators are told once)" if plan.operator else ""))
        lines.append("postpone to the next window if this one closes or cannot hold the forecast downtime")
        return lines

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        if plan.window is None:
            return Outcome(ctx.once("await_window", "no window: go on", lambda _: {"decision": "no window"}))
        now = ctx.now()
        found = current_slot(ctx)
        if found is None:
            slot = next_slot(plan.window, now)
            if slot is None:
                return Outcome(park="the plan's window has no upcoming occurrence; `upgrader resume HOST --now --yes` "
                                    "cuts over now, `upgrader abort HOST` ends the run")
            fix_slot(ctx, 0, slot, "first")
            found = (0, slot)
        seq, slot = found
        tell(ctx, Kind.ANNOUNCE, "notice.announce", slot, seq)
        if ctx.record.options.now:
            return Outcome(ctx.once("await_window", "operator: cut over now", lambda _: {"decision": "now (operator)"}))
        if plan.approval == "required" and "approval" not in ctx.journal.done:
            when = f"window {seq}: opens {local(ctx, slot.start)}, closes {local(ctx, slot.end)}"
            tell_operator(ctx, APPROVAL_KEY, approval_event(ctx.record, when, state_dir=ctx.state_dir))
            return Outcome(park="waiting for approval: `upgrader approve HOST`")
        if now < slot.start:
            if plan.announce is not None and now >= slot.start - plan.announce.reminder_before:
                tell(ctx, Kind.REMINDER, f"notice.reminder[{seq}]", slot, seq)
            return Outcome(park=f"window opens {local(ctx, slot.start)}, closes {local(ctx, slot.end)}; "
                                "`upgrader run-due` (cron / systemd timer) cuts over then")
        if slot.contains(now) and slot.remaining(now) >= needed(ctx):
            out: dict[str, Any] = ctx.once("await_window", f"in window {seq}", lambda _: {"decision": "window", "window": seq})
            return Outcome(out)
        why = "window closed before cutover could start" if not slot.contains(now) else (
            f"only {slot.remaining(now)} left in the window, cutover needs {needed(ctx)}")
        later = next_slot(plan.window, now, after=slot.start)
        if later is None:
            return Outcome(park=f"{why}; the plan has no later window")
        fix_slot(ctx, seq + 1, later, why)
        tell(ctx, Kind.POSTPONED, f"notice.postponed[{seq + 1}]", later, seq + 1, reason=why)
        return Outcome(park=f"postponed: {why}; next window opens {local(ctx, later.start)}")
