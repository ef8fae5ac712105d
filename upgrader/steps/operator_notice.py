"""Telling the operators (the plan's `operator:` block; never the customers) that a run is held,
waits for approval, is rolled back or failed: the host, the step, the error's last lines and the
exact commands to run next.

    tell_operator(ctx, APPROVAL_KEY, approval_event(ctx.record, state_dir=ctx.state_dir))

Every channel's delivery is its own `once` (`<key>.email`, `<key>.webhook`): a crash-resume never
sends it twice (a process killed in the middle of a send does not send again and says so);
each is retried; one that still fails is journaled (`sent: false`), said as a warning, and the
run goes on. The builders clean every text that may come from a guest with `operator_tail`
(escapes stripped, NAME=secret masked, trimmed); the customer notices never see any of it."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from upgrader.errors import UpgraderError
from upgrader.held import command, next_commands
from upgrader.events import Notice as UiNotice
from upgrader.notify.delivery import retry_delivery
from upgrader.notify.operator import OperatorChannel, OperatorChannels, OperatorEvent, OperatorKind
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.steps.base import StepContext
from upgrader.steps.notices import operator_tail

if TYPE_CHECKING:
    from upgrader.plan import Plan

APPROVAL_KEY = "operator.approval"  # once per run
ROLLED_BACK_KEY = "operator.rolled_back"  # once per run
FAILED_KEY = "operator.failed"  # once per run
URGENT_KEY = "operator.urgent"  # once per interruption: urgent_key()


def held_key(failures: int) -> str:
    """The key of the notice for a run held by its `failures`-th failure (the number of `failed`
    journal entries so far): a run held, retried and held again tells the operators again, and
    calling tell_operator again for the same hold (a resume of the held run) sends nothing twice."""
    return f"operator.held[{failures}]"


def tell_operator(ctx: StepContext, key: str, event: OperatorEvent) -> None:
    """Send `event` on every operator channel, each at most once per run under `<key>.<channel>`.
    Never raises for a delivery (an abort request honoured before a send still stops the step,
    as before any side effect). Nothing without an operator block."""
    channels = ctx.ports.operator
    if channels is None:
        return
    notice_id = f"{ctx.run_id}/{key}"  # the same on every retry: a receiver can drop a repeat
    for name, channel in channels.named():
        _deliver(ctx, f"{key}.{name}", name, channel, channels, event, notice_id)


def _deliver(ctx: StepContext, key: str, name: str, channel: OperatorChannel, channels: OperatorChannels,
             event: OperatorEvent, notice_id: str) -> None:
    what = f"the operator {name} notice ({event.summary})"

    def send(_: dict[str, Any]) -> dict[str, Any]:
        try:
            delivery_id = retry_delivery(lambda: channel.deliver(event, notice_id), what, channels.attempts, channels.max_wait)
        except UpgraderError as exc:  # unreachable after the retries, refused, or a value refused as a header
            ctx.emit(UiNotice(f"{what} could not be sent: {exc.message}; the run goes on", "warning"))
            return {"sent": False, "to": channel.describe(), "error": exc.message}
        ctx.emit(UiNotice(f"operators told by {name} ({channel.describe()}): {event.summary}"))
        return {"sent": True, "to": channel.describe(), "id": delivery_id}

    def died_during_send(_: dict[str, Any]) -> dict[str, Any]:
        ctx.emit(UiNotice(f"{what} may have been sent before the crash; not sent again", "warning"))
        return {"sent": "unknown"}

    ctx.once(key, f"tell the operators by {name}: {event.summary}", send, died_during_send)


# --------------------------------------------------------------------------------------------
# The events and their next commands
# --------------------------------------------------------------------------------------------


def _error_text(message: str | None, tail: str | None = None) -> tuple[str | None, str | None]:
    """(first line, last lines) of an error for an operator, cleaned by operator_tail; the last
    lines are `tail` if given (e.g. the command's output), else those of the message after its
    first line (a command's error is "`cmd` exited 1:" and then its output)."""
    head, _, more = (message or "").partition("\n")
    first = operator_tail(head, lines=1) if head else ""
    rest = operator_tail(tail) if tail else operator_tail(more)
    return first or None, rest or None


def held_event(record: RunRecord, plan: "Plan", step_key: str | None, message: str | None, tail: str | None,
               *, checkpoints: list[str] | None = None, state_dir: str = "") -> OperatorEvent:
    """A run held after `step_key` failed before the cutover: the twin is kept for a look.
    Commands: status, then what `upgrader status` lists (ssh to the twin, retry, skip where it
    makes sense, revert to each checkpoint, abort)."""
    host = record.host
    commands = [command(state_dir, "status", host), *next_commands(host, step_key, checkpoints, state_dir=state_dir)]
    error, last = _error_text(message, tail)
    phase = record.error.phase if record.error else record.phase  # the phase that failed, not `held`
    twin = f"the twin {plan.twin_name} is on {plan.staging.network}; production ({plan.source.domain}) was not touched"
    return OperatorEvent(OperatorKind.HELD, host, record.run_id, phase, step=step_key, error=error, tail=last,
                         notes=(twin,), commands=tuple(commands))


def approval_event(record: RunRecord, note: str | None = None, *, state_dir: str = "") -> OperatorEvent:
    """The run waits for `upgrader approve` (plan: approval: required) before its cutover."""
    host = record.host
    commands = (command(state_dir, "status", host), command(state_dir, "approve", host), command(state_dir, "abort", host))
    return OperatorEvent(OperatorKind.APPROVAL, host, record.run_id, Phase.AWAIT_WINDOW,
                         notes=(note,) if note else (), commands=commands)


def rolled_back_event(record: RunRecord, *, state_dir: str = "") -> OperatorEvent:
    """The rollback ended: the cause (None when an operator asked for it), the run's warnings
    (a twin kept with data only on it), and how to look and start again."""
    host, cause = record.host, record.error
    error, last = _error_text(cause.message if cause else None)
    commands = (command(state_dir, "status", host), command(state_dir, "show", host),
                command(state_dir, "start", host, "--plan", record.plan_path))
    return OperatorEvent(OperatorKind.ROLLED_BACK, host, record.run_id, cause.phase if cause else Phase.ROLLING_BACK,
                         error=error, tail=last, hint=_clean(cause.hint if cause else None),
                         notes=tuple(operator_tail(w, lines=20, width=1000) for w in record.warnings), commands=commands)


def operator_event_for_failure(record: RunRecord, plan: "Plan", *, state_dir: str = "") -> OperatorEvent:
    """The run ends in `failed` (its abort or rollback failed too often): what failed last, the
    run's warnings, and where to look - nothing is retried by itself any more."""
    host = record.host
    failure = record.cleanup_error or record.error
    error, last = _error_text(failure.message if failure else None)
    commands = (command(state_dir, "status", host), command(state_dir, "show", host),
                " ".join(shlex.quote(w) for w in ("virsh", "-c", plan.source.libvirt_uri, "list", "--all")))
    return OperatorEvent(OperatorKind.FAILED, host, record.run_id, failure.phase if failure else record.phase,
                         error=error, tail=last, hint=_clean(failure.hint if failure else None),
                         notes=tuple(operator_tail(w, lines=20, width=1000) for w in record.warnings), commands=commands)


def urgent_key(entries: list[dict[str, Any]]) -> str:
    """The key of the notice for a run found interrupted inside the cutover: one per interruption
    (the journal's length without these notices' own lines), so a run-due killed right after the
    notice does not send it again, and a second interruption later is told again."""
    seen = sum(1 for e in entries if not str(e.get("key", "")).startswith(URGENT_KEY))
    return f"{URGENT_KEY}[{seen}]"


def urgent_event(record: RunRecord, note: str, *, state_dir: str = "") -> OperatorEvent:
    """A run interrupted inside the cutover (cutover, verify, rolling_back): prod may be down;
    `run-due` is resuming it now. `note` says how it was found (the dead process)."""
    host = record.host
    commands = (command(state_dir, "status", host), command(state_dir, "show", host),
                command(state_dir, "resume", host))
    return OperatorEvent(OperatorKind.URGENT, host, record.run_id, record.phase, notes=(note,), commands=commands)


def _clean(text: str | None) -> str | None:
    return (operator_tail(text) or None) if text else None
