"""Telling customers, each notice at most once per run (journal), never blocking the workflow:
a send that fails after its retries is reported and recorded as not sent."""

from __future__ import annotations

from typing import Any

from upgrader.errors import InfraError
from upgrader.events import Notice as UiNotice
from upgrader.notify import Kind, Notice, render, send_with_retry
from upgrader.steps.base import StepContext
from upgrader.windows import Slot

SEND_ATTEMPTS = 4
SEND_MAX_WAIT = 10.0


def forecast_seconds(ctx: StepContext) -> float | None:
    passes = [v for k, v in sorted(ctx.record.outputs.items()) if k.startswith("presync.pass[")]
    return float(passes[-1]["seconds"]) if passes else None


def tell(ctx: StepContext, kind: Kind, key: str, slot: Slot, sequence: int, reason: str | None = None) -> None:
    """Send one notice as a `once`. A process that died during the send is not repeated: the
    notice may have gone out, and customers must never get it twice."""
    announce = ctx.plan.announce
    if announce is None or ctx.ports.notifier is None or ctx.plan.window is None:
        return
    template_dir = ctx.plan.resolve_path(announce.template_dir) if announce.template_dir else None

    def send(_: dict[str, Any]) -> dict[str, Any]:
        notice = Notice(kind=kind, host=ctx.record.host, run_id=ctx.run_id, window_start=slot.start, window_end=slot.end,
                        timezone=ctx.plan.window.timezone, sequence=sequence, reason=reason,
                        forecast_seconds=forecast_seconds(ctx))
        message = render(notice, announce, template_dir)
        try:
            message_id = send_with_retry(ctx.ports.notifier, message, attempts=SEND_ATTEMPTS, max_wait=SEND_MAX_WAIT)
        except InfraError as exc:
            ctx.emit(UiNotice(f"the {kind.value} notice could not be sent: {exc.message}", "error"))
            return {"sent": False, "error": exc.message}
        ctx.emit(UiNotice(f"{kind.value} notice sent to {', '.join(announce.to)}"))
        return {"sent": True, "message_id": message_id, "sequence": sequence}

    def died_during_send(_: dict[str, Any]) -> dict[str, Any]:
        ctx.emit(UiNotice(f"the {kind.value} notice may have been sent before the crash; not sent again", "warning"))
        return {"sent": "unknown"}

    ctx.once(key, f"tell customers: {kind.value}", send, died_during_send)


def tell_about_window(ctx: StepContext, kind: Kind, key: str, reason: str | None = None) -> None:
    """A notice about the window customers were told about (done, rolled back, called off);
    nothing if no announcement went out."""
    from upgrader.steps.window import current_slot

    found = current_slot(ctx)
    if found is None or "notice.announce" not in ctx.journal.done:
        return
    seq, slot = found
    tell(ctx, kind, key, slot, seq + (1 if kind == Kind.POSTPONED else 0), reason)
