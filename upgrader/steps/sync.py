"""Data sync between prod and the twin: one rsync pass as a `once` (pre-sync passes, reverse
sync), the cutover's sync session (opened before the quiesce so the final pass is only rsync),
the plan's service commands, the sync keys a killed sync left. The pre-sync phase itself is in
steps/presync.py."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.events import Notice
from upgrader.steps.base import StepContext

if TYPE_CHECKING:
    from upgrader.plan import Plan
    from upgrader.ports import SyncSession


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
                            "it is swept at the end of the run", "warning"))
        return {**asdict(stats), **(extra or {})}

    return ctx.once_reconnecting(key, f"rsync {source} -> {target}" + (" (final)" if final else ""), run)


SYNC_KEYS = ("presync.pass[", "cutover.sync_open", "cutover.final_sync", "rollback.reverse_sync")
# a session's key stays authorised from its open until its close, not only while the open runs
SESSION_CLOSE = {"cutover.sync_open": "cutover.sync_close"}


def sync_in_doubt(ctx: StepContext) -> bool:
    """A sync began and never finished (a session: began and was never closed): its key may
    still be authorised."""
    return any(key.startswith(SYNC_KEYS) and SESSION_CLOSE.get(key, key) not in ctx.journal.done
               for key in ctx.journal.begun)


@dataclass
class OpenSync:
    """The cutover's sync session in this process: None until opened, and in a resumed process
    whose predecessor opened it (its key was swept on resume; a pass opens a new one)."""

    source: str
    target: str
    session: "SyncSession | None" = None

    def ensure(self, ctx: StepContext, key: str) -> "SyncSession":
        if self.session is None:
            self.session = ctx.ports.syncer.open(self.source, self.target, sync_paths(ctx.plan), on_output=ctx.output_sink(key))
        return self.session

    def drop(self) -> bool:
        """Close it if open (bounded, never raising): True when no key of it is left."""
        session, self.session = self.session, None
        return session.close() if session is not None else True


def open_session(ctx: StepContext, key: str, held: OpenSync) -> dict[str, Any]:
    """Set the sync up (key pair, authorised key, tunnel) as a `once`. Begun and not closed, it
    counts as a sync in doubt (SESSION_CLOSE): a kill before its close gets its key swept."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        session = held.ensure(ctx, key)
        return {"key_id": session.key_id, "seconds": round(time.monotonic() - started, 3)}

    return ctx.once_reconnecting(key, f"open the sync {held.source} -> {held.target} (key, tunnel)", run)


def session_pass(ctx: StepContext, key: str, held: OpenSync, *, final: bool) -> dict[str, Any]:
    """One pass through the open session as a `once`, the same outputs as `sync_once`. With no
    session in this process (resumed) it opens one first. A pass that fails closes the session:
    a lost connection took the tunnel with it, and a retry opens a new one."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        session = held.ensure(ctx, key)
        try:
            stats = session.pass_(final=final, on_output=ctx.output_sink(key))
        except BaseException:
            held.drop()
            raise
        return asdict(stats)

    return ctx.once_reconnecting(key, f"rsync {held.source} -> {held.target}" + (" (final)" if final else ""), run)


def close_session(ctx: StepContext, key: str, held: OpenSync) -> dict[str, Any]:
    """Remove the session's key and tunnel as a `once`. In a resumed process without the session
    its key was swept on resume; this sweeps both sides again (idempotent)."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        if held.session is None:
            return {"key_id": None, "swept": ctx.ports.syncer.sweep([held.source, held.target], ctx.run_id)}
        key_id = held.session.key_id
        left = not held.drop()
        if left:
            ctx.emit(Notice(f"the sync key {key_id} could not be removed from {held.source}; "
                            "it is swept at the end of the run", "warning"))
        return {"key_id": key_id, "key_left": left}

    return ctx.once(key, f"close the sync {held.source} -> {held.target} (remove its key and tunnel)", run)


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
