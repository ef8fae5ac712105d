"""await_window: fix the cutover window, tell customers, wait for the window and the approval.

The window in use is journaled as `window[N]` (N = its iCalendar SEQUENCE: 0, then +1 for every
postponement). Each call of the step (a start, a resume, `upgrader run-due`) looks at the clock:
  * a notice to customers that could not be sent is tried again once its back-off is over
    (steps/notices.py), and the `postponed` notice of a later window the customers were not
    told of is sent (also when a crash came between fixing that window and telling them);
  * `approval: required` and no `upgrader approve HOST` yet: park (with or without a window,
    with or without `--now`; the operators are told once);
  * before the window: send the reminder once it is due, then park (the process exits);
  * in the window, customers not told (the announcement failed) and `announce.required`: park;
  * in the window: pre-sync again until the passes converge (steps/presync.py), then cut over
    if the window still holds the new forecast downtime;
  * window closed, or too little of it left: postpone to the next window, tell customers, park.
`--now --yes` cuts over at once (after the approval, if one is required, and a fresh pre-sync);
the operator's override is in the journal. Without a window and without an approval the run
cuts over right after its pre-sync.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from upgrader.events import Notice
from upgrader.forecast import FORECAST_KEY
from upgrader.notice_keys import ANNOUNCE_KEY, attempt_key, customers_told, last_attempt, postponed_key, sent_state
from upgrader.notify import Kind
from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.notices import forecast_of, forecast_seconds, tell
from upgrader.steps.presync import converge
from upgrader.steps.operator_notice import APPROVAL_KEY, approval_event, tell_operator
from upgrader.window_fit import FORECAST_FACTOR, FORECAST_SLACK
from upgrader.windows import Slot, describe, next_slot
from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import Plan

DECISION_KEY = "await_window"  # journaled once the run goes on to the cutover
APPROVAL = "approval"  # journaled by `upgrader approve`


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


def approved(ctx: StepContext) -> bool:
    return ctx.plan.approval != "required" or APPROVAL in ctx.journal.done


def wait_for_approval(ctx: StepContext, note: str) -> Outcome:
    """Park until `upgrader approve HOST`; the operators are told once per run."""
    tell_operator(ctx, APPROVAL_KEY, approval_event(ctx.record, note, state_dir=ctx.state_dir))
    return Outcome(park=f"waiting for approval: `upgrader approve {ctx.record.host}`, then "
                        f"`upgrader resume {ctx.record.host}` or `upgrader run-due` ({note})")


def refresh(ctx: StepContext, round_: str) -> dict[str, Any]:
    """Pre-sync again until the passes converge (mail kept arriving while the run waited): the
    forecast is then that of the data as it is now. Returns the decision's typed parts."""
    passes = converge(ctx, round_)
    found = forecast_of(ctx)
    if found is not None:
        ctx.emit(Notice(f"pre-sync refreshed ({len(passes)} pass(es)); downtime forecast: {found.describe()}"))
    return {"refresh": {"round": round_, "passes": len(passes)}, FORECAST_KEY: found.to_outputs() if found else None}


def decide(ctx: StepContext, title: str, decision: dict[str, Any], parts: dict[str, Any]) -> Outcome:
    return Outcome(ctx.once(DECISION_KEY, title, lambda _: {**decision, **parts}))


def announce_state(ctx: StepContext, seq: int, slot: Slot) -> bool:
    """Tell the customers of window `seq` (the announcement, or a failed notice of a postponement
    tried again); True if they know of it (or need not: no announce block)."""
    if ctx.plan.announce is None or ctx.ports.notifier is None:
        return True
    tell(ctx, Kind.ANNOUNCE, ANNOUNCE_KEY, slot, seq)
    tell_postponed(ctx, seq, slot)
    return customers_told(ctx.journal.done, seq)


def tell_postponed(ctx: StepContext, seq: int, slot: Slot) -> None:
    """The `postponed` notice of window `seq` (> 0), if the customers were told of an earlier
    window and not yet of this one: whether its first try failed, or the process died between
    fixing `window[seq]` and sending it (never begun). `tell` sends it at most once: one that may
    have gone out before a crash is not repeated."""
    done = ctx.journal.done
    if seq == 0 or sent_state(done, ANNOUNCE_KEY) in (None, False) or customers_told(done, seq):
        return  # an announcement not sent yet goes out (tried again) naming window `seq` itself
    why = str(done.get(f"window[{seq}]", {}).get("why") or "") or None
    tell(ctx, Kind.POSTPONED, postponed_key(seq), slot, seq, reason=why)


class AwaitWindow:
    phase = Phase.AWAIT_WINDOW

    def describe(self, plan: "Plan") -> list[str]:
        approval = plan.approval == "required"
        if plan.window is None:
            if not approval:
                return ["no window in the plan: cut over right after pre-sync"]
            return ["no window in the plan; park until `upgrader approve HOST`"
                    + (" (the operators are told once)" if plan.operator else ""),
                    "once approved, the next `upgrader resume HOST` or `upgrader run-due`: pre-sync again until the "
                    "passes converge, then cut over",
                    "`--now` does not skip the approval"]
        lines = [f"fix the next window ({describe(plan.window)}) and park until it opens; `upgrader run-due` resumes it"]
        if plan.announce:
            lines.append(f"tell {', '.join(plan.announce.to)}: announcement now, reminder {format_duration(plan.announce.reminder_before)} before")
            lines.append("a notice that could not be sent is tried again by `upgrader run-due` (after 1, 5, 15, 60 min, "
                         "then hourly); "
                         + ("the cutover waits until the customers are told of the window"
                            if plan.announce.required else "the cutover does not wait for it (announce.required: false)"))
        if approval:
            lines.append("wait for `upgrader approve HOST`" + (" (the operators are told once)" if plan.operator else "")
                         + "; `--now` does not skip it")
        lines.append("when the window opens: pre-sync again until the passes converge, then cut over if the window "
                     f"still holds the forecast downtime (x{FORECAST_FACTOR} + {int(FORECAST_SLACK.total_seconds())} s)")
        lines.append("postpone to the next window if this one closes or cannot hold the forecast downtime")
        return lines

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        asked_now = ctx.record.options.now
        if plan.window is None and plan.approval != "required" and not asked_now:
            return Outcome(ctx.once(DECISION_KEY, "no window: go on", lambda _: {"decision": "no window"}))
        now = ctx.now()
        found = current_slot(ctx)
        if found is None and plan.window is not None:
            slot = next_slot(plan.window, now)
            if slot is None and not asked_now:
                return Outcome(park="the plan's window has no upcoming occurrence; `upgrader resume HOST --now --yes` "
                                    "cuts over now, `upgrader abort HOST` ends the run")
            if slot is not None:
                fix_slot(ctx, 0, slot, "first")
                found = (0, slot)
        told = announce_state(ctx, *found) if found is not None else True
        if not approved(ctx):
            if asked_now:
                note = "cut over now was asked (--now): it cuts over as soon as approved"
            elif found is None:
                note = "no window in the plan: it cuts over as soon as approved"
            else:
                seq, slot = found
                note = f"window {seq}: opens {local(ctx, slot.start)}, closes {local(ctx, slot.end)}"
            return wait_for_approval(ctx, note)
        if asked_now:
            return decide(ctx, "operator: cut over now", {"decision": "now (operator)"}, refresh(ctx, "now"))
        if found is None:  # no window, approved
            return decide(ctx, "approved: cut over", {"decision": "approved"}, refresh(ctx, "approved"))
        seq, slot = found
        assert plan.window is not None
        not_told = "" if told else "; customers not told yet (the announcement is tried again by `upgrader run-due`, backing off to hourly)"
        if now < slot.start:
            if plan.announce is not None and now >= slot.start - plan.announce.reminder_before:
                tell(ctx, Kind.REMINDER, f"notice.reminder[{seq}]", slot, seq)
            return Outcome(park=f"window opens {local(ctx, slot.start)}, closes {local(ctx, slot.end)}; "
                                f"`upgrader run-due` (cron / systemd timer) cuts over then{not_told}")
        if slot.contains(now) and not told and plan.announce is not None and plan.announce.required:
            return Outcome(park=f"customers not told: the announcement of window {seq} could not be sent "
                                f"({last_error(ctx, seq)}); the cutover waits for it, and the notice is tried again by "
                                "`upgrader run-due`, backing off to hourly (the window is postponed if it closes meanwhile; "
                                "`announce.required: false` in a plan cuts over without it)")
        if slot.contains(now):  # the fit is decided with the forecast of the data as it is now
            parts = refresh(ctx, f"window[{seq}]")
            now = ctx.now()
            if slot.contains(now) and slot.remaining(now) >= needed(ctx):
                return decide(ctx, f"in window {seq}", {"decision": "window", "window": seq}, parts)
        now = ctx.now()
        why = "window closed before cutover could start" if not slot.contains(now) else (
            f"only {slot.remaining(now)} left in the window, cutover needs {needed(ctx)}")
        later = next_slot(plan.window, now, after=slot.start)
        if later is None:
            return Outcome(park=f"{why}; the plan has no later window")
        fix_slot(ctx, seq + 1, later, why)
        tell_postponed(ctx, seq + 1, later)
        return Outcome(park=f"postponed: {why}; next window opens {local(ctx, later.start)}")


def last_error(ctx: StepContext, seq: int) -> str:
    for key in (postponed_key(seq), ANNOUNCE_KEY):
        n = last_attempt(ctx.journal.done, key)
        if n is not None and ctx.journal.done[attempt_key(key, n)].get("sent") is False:
            return str(ctx.journal.done[attempt_key(key, n)].get("error") or "not sent")
    return "not sent"
