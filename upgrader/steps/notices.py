"""Telling customers, each notice at most once per run (journal): a send that fails after its
retries is reported, recorded as not sent (with its time), and tried again at the step's next
call once its back-off is over (`RETRY_BACKOFF`: 1, 5, 15, 60 minutes, then hourly; a call
before that tries nothing and writes nothing). The window step parks the cutover until the
customers are told, unless `announce.required: false`.

Customers and operators are separate audiences. A customer notice never carries an error's text
(it holds remote commands and guest output: paths, secrets, guest-supplied HTML): its reason is
one of the fixed sentences of `customer_reason`, chosen from the failed phase. Operator notices
get the error trimmed by `operator_tail`."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from upgrader.errors import InfraError
from upgrader.forecast import Forecast, forecast
from upgrader.events import Notice as UiNotice
from upgrader.notice_keys import ANNOUNCE_KEY, attempt_key, last_attempt, sent_state
from upgrader.notify import Kind, Notice, render, send_with_retry
from upgrader.phases import Phase
from upgrader.record import RunError
from upgrader.steps.base import StepContext
from upgrader.windows import Slot

SEND_ATTEMPTS = 4
SEND_MAX_WAIT = 10.0


# after the n-th failed try of a notice, the next one is due this long after it (then hourly):
# `upgrader run-due` every minute with the SMTP server down writes a few keys, not one a minute
RETRY_BACKOFF = (dt.timedelta(minutes=1), dt.timedelta(minutes=5), dt.timedelta(minutes=15), dt.timedelta(hours=1))


def retry_due(failed: dict[str, Any], failures: int) -> dt.datetime | None:
    """When the notice whose last try (`failed`, its outputs) was its `failures`-th failure may be
    tried again; None: at once (a try journaled before the time was kept)."""
    at = failed.get("at")
    if not isinstance(at, str):
        return None
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    return when + RETRY_BACKOFF[min(failures, len(RETRY_BACKOFF)) - 1]


def forecast_of(ctx: StepContext) -> Forecast | None:
    """The downtime forecast from this run's outputs so far (upgrader/forecast.py)."""
    sync = ctx.plan.sync
    return forecast(ctx.journal.done, strategy=ctx.plan.takeover.strategy, quiesce_commands=len(sync.quiesce),
                    resume_commands=len(sync.resume))


def forecast_seconds(ctx: StepContext) -> float | None:
    found = forecast_of(ctx)
    return found.total if found is not None else None


def tell(ctx: StepContext, kind: Kind, key: str, slot: Slot, sequence: int, reason: str | None = None) -> dict[str, Any] | None:
    """Send one notice as a `once`; returns its outputs (`sent`: True, False or "unknown"), None
    without an announce block or while a failed notice backs off (`retry_due`). A process that died during the send is not repeated: the notice
    may have gone out, and customers must never get it twice. One that failed (`sent: false`) is
    tried again at the next call, under its next attempt key (upgrader/notice_keys.py)."""
    announce = ctx.plan.announce
    if announce is None or ctx.ports.notifier is None or ctx.plan.window is None:
        return None
    template_dir = ctx.plan.resolve_path(announce.template_dir) if announce.template_dir else None

    def send(_: dict[str, Any]) -> dict[str, Any]:
        notice = Notice(kind=kind, host=ctx.record.host, run_id=ctx.run_id, window_start=slot.start, window_end=slot.end,
                        timezone=ctx.plan.window.timezone, sequence=sequence, reason=reason,
                        forecast_seconds=forecast_seconds(ctx))
        message = render(notice, announce, template_dir)
        try:
            message_id = send_with_retry(ctx.ports.notifier, message, attempts=SEND_ATTEMPTS, max_wait=SEND_MAX_WAIT)
        except InfraError as exc:
            ctx.emit(UiNotice(f"the {kind.value} notice could not be sent: {exc.message}; it is tried again at the "
                              "next `upgrader run-due` or resume", "error"))
            return {"sent": False, "error": exc.message, "sequence": sequence, "at": ctx.now().isoformat()}
        ctx.emit(UiNotice(f"{kind.value} notice sent to {', '.join(announce.to)}"))
        return {"sent": True, "message_id": message_id, "sequence": sequence}

    def died_during_send(_: dict[str, Any]) -> dict[str, Any]:
        ctx.emit(UiNotice(f"the {kind.value} notice may have been sent before the crash; not sent again", "warning"))
        return {"sent": "unknown"}

    tried = last_attempt([*ctx.journal.begun, *ctx.journal.done], key)
    attempt = 0 if tried is None else tried
    if tried is not None and ctx.journal.done.get(attempt_key(key, tried), {}).get("sent") is False:
        due = retry_due(ctx.journal.done[attempt_key(key, tried)], tried + 1)
        if due is not None and ctx.now() < due:
            return None  # backing off: nothing tried, nothing written
        attempt = tried + 1  # the last try failed: try again
    title = f"tell customers: {kind.value}" + (f" (attempt {attempt + 1})" if attempt else "")
    return ctx.once(attempt_key(key, attempt), title, send, died_during_send)


def told_of_maintenance(ctx: StepContext) -> bool:
    """An announcement went out (or may have, before a crash): the customers know of the work."""
    return sent_state(ctx.journal.done, ANNOUNCE_KEY) not in (None, False)


def tell_about_window(ctx: StepContext, kind: Kind, key: str, reason: str | None = None) -> None:
    """A notice about the window customers were told about (done, rolled back, called off);
    nothing if no announcement went out. The customers' reason comes from `customer_reason`
    (the run's error phase); `reason` is accepted for older callers and never shown to them."""
    from upgrader.steps.window import current_slot

    del reason  # may be an error message: internal text, never for customers
    found = current_slot(ctx)
    if found is None or not told_of_maintenance(ctx):
        return
    seq, slot = found
    tell(ctx, kind, key, slot, seq + (1 if kind == Kind.POSTPONED else 0), customer_reason(kind, ctx.record.error))


# --------------------------------------------------------------------------------------------
# What each audience may read
# --------------------------------------------------------------------------------------------

CALLED_OFF = "the maintenance was called off"
_CALLED_OFF_BECAUSE = {
    Phase.UPGRADE: "the upgrade could not be completed",
    Phase.VALIDATE_STAGING: "the upgraded system did not pass its checks",
}
_ROLLED_BACK_BECAUSE = {
    Phase.VERIFY: "the post-upgrade checks did not pass",
    Phase.CUTOVER: "the switch to the upgraded system could not be completed",
}


def customer_reason(kind: Kind, error: RunError | None) -> str | None:
    """The reason a customer notice gives: a fixed, polite sentence chosen from the kind and the
    phase that failed, never the error's text. None for a notice without a reason (done)."""
    if kind == Kind.ROLLED_BACK:
        if error is None:
            return "it was undone as a precaution"
        return _ROLLED_BACK_BECAUSE.get(error.phase, "the upgrade could not be completed")
    if kind == Kind.POSTPONED:
        if error is None:
            return CALLED_OFF
        return f"{CALLED_OFF}: {_CALLED_OFF_BECAUSE.get(error.phase, 'the preparation could not be completed')}"
    return None


_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
_SECRET = re.compile(r"(?i)\b([A-Z0-9_.-]*(?:PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY)[A-Z0-9_.-]*)(\s*[=:]\s*)(\S+)")


def operator_tail(text: str, lines: int = 10, width: int = 200) -> str:
    """An error for an operator notice: terminal escapes and control characters removed,
    `NAME=value` secrets (password, secret, token, key) shown as `NAME=***`, only the last
    `lines` lines (an "... N earlier lines" marker says how many were left out), each cut to
    `width` characters."""
    clean = _CONTROLS.sub("", _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\t", " ")))
    rows = [_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", row).rstrip() for row in clean.split("\n")]
    while rows and not rows[-1]:
        rows.pop()
    dropped = max(0, len(rows) - lines)
    kept = [row if len(row) <= width else row[: max(0, width - 1)] + "\u2026" for row in rows[dropped:]]
    return "\n".join(([f"... {dropped} earlier line{'s' if dropped != 1 else ''}"] if dropped else []) + kept)
