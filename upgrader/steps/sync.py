"""Data sync between prod and the twin: one rsync pass as a `once` (pre-sync passes, reverse
sync), the plan's service commands, the sync keys a killed sync left. The cutover's sync session
is in steps/sync_session.py, the pre-sync phase in steps/presync.py."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.events import Notice
from upgrader.steps.base import StepContext

if TYPE_CHECKING:
    from upgrader.plan import Plan


def sync_paths(plan: "Plan") -> list[tuple[str, list[str]]]:
    return [(p.path, list(p.exclude)) for p in plan.sync.paths]


def sync_once(ctx: StepContext, key: str, source: str, target: str, *, final: bool,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One rsync pass as a `once` (its SyncStats, plus `extra` in its outputs). rsync is
    idempotent, so an interrupted pass (crash, lost connection) is simply redone."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        stats = ctx.ports.syncer.sync(source, target, sync_paths(ctx.plan), final=final, on_output=ctx.output_sink(key))
        if stats.key_left:
            ctx.emit(Notice(f"the sync key {stats.key_id} could not be removed from {source}; "
                            "the next sync's authorisation or a sweep removes it", "warning"))
        return {**asdict(stats), **(extra or {})}

    return ctx.once_reconnecting(key, f"rsync {source} -> {target}" + (" (final)" if final else ""), run)


SYNC_KEYS = ("presync.pass[", "cutover.sync_open", "cutover.sync_reopen[", "cutover.final_sync", "rollback.reverse_sync")
# the cutover's session (steps/sync_session.py): its key stays authorised from an open until the
# revoke, not only while the open runs
SESSION_OPENS, SESSION_REVOKE = ("cutover.sync_open", "cutover.sync_reopen["), "cutover.sync_close"


def sync_in_doubt(ctx: StepContext) -> bool:
    """A sync began and never finished (a session: opened and never revoked): its key may
    still be authorised."""
    return any(key.startswith(SYNC_KEYS) and (SESSION_REVOKE if key.startswith(SESSION_OPENS) else key) not in ctx.journal.done
               for key in ctx.journal.begun)


def sweep_sync_keys(ctx: StepContext, roles: tuple[str, ...] = ("prod", "staging")) -> int:
    """Remove this run's sync keys that a killed sync left authorised (idempotent; a role that
    does not answer counts 0 - its keys go with it, or at its next sync)."""
    removed = ctx.ports.syncer.sweep(list(roles), ctx.run_id)
    if removed:
        ctx.emit(Notice(f"removed {removed} sync key(s) a killed sync had left authorised"))
    return removed


def run_commands(ctx: StepContext, key: str, role: str, commands: list[str], what: str) -> dict[str, Any]:
    """The plan's quiesce/resume commands, in order, each must succeed; timed (`seconds`). They
    are service stop/start commands: running them again after a crash is harmless."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        run_plain_commands(ctx, key, role, commands, what)
        return {"commands": len(commands), "seconds": round(time.monotonic() - started, 3)}

    return ctx.once(key, f"{what} on {role} ({len(commands)} command(s))", run)


def run_plain_commands(ctx: StepContext, key: str, role: str, commands: list[str], what: str) -> None:
    """The commands in order on `role`, outside any `once` (the caller's): each must succeed."""
    from upgrader.ports import Command

    shell = ctx.ports.shells.connect(role)
    for command in commands:
        result = shell.run(Command.raw(command), timeout=300, on_output=ctx.output_sink(key))
        if not result.ok:
            raise StepFailed(f"{what} on {role}: `{command}` exited {result.rc}:\n{result.tail()}")
