"""Data sync between prod and the twin (pre-sync passes, final pass, reverse sync)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.events import Notice
from upgrader.phases import Phase
from upgrader.steps.upgrade import merge_checkpoints
from upgrader.steps.base import Outcome, StepContext

if TYPE_CHECKING:
    from upgrader.plan import Plan


def sync_paths(plan: "Plan") -> list[tuple[str, list[str]]]:
    return [(p.path, list(p.exclude)) for p in plan.sync.paths]


def sync_once(ctx: StepContext, key: str, source: str, target: str, *, final: bool) -> dict[str, Any]:
    """One rsync pass as a `once`. rsync is idempotent, so an interrupted pass (crash, lost
    connection) is simply redone."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        stats = ctx.ports.syncer.sync(source, target, sync_paths(ctx.plan), final=final, on_output=ctx.output_sink(key))
        if stats.key_left:
            ctx.emit(Notice(f"the sync key {stats.key_id} could not be removed from {source}; "
                            "it is swept at the end of the run", "warning"))
        return asdict(stats)

    return ctx.once_reconnecting(key, f"rsync {source} -> {target}" + (" (final)" if final else ""), run)


SYNC_KEYS = ("presync.pass[", "cutover.final_sync", "rollback.reverse_sync")


def sync_in_doubt(ctx: StepContext) -> bool:
    """A sync began and never finished: its key may still be authorised."""
    return any(key.startswith(SYNC_KEYS) and key not in ctx.journal.done for key in ctx.journal.begun)


def sweep_sync_keys(ctx: StepContext, roles: tuple[str, ...] = ("prod", "staging")) -> int:
    """Remove this run's sync keys that a killed sync left authorised (idempotent; a role that
    does not answer counts 0 - its keys go with it, or at its next sync)."""
    removed = ctx.ports.syncer.sweep(list(roles), ctx.run_id)
    if removed:
        ctx.emit(Notice(f"removed {removed} sync key(s) a killed sync had left authorised"))
    return removed


def run_commands(ctx: StepContext, key: str, role: str, commands: list[str], what: str) -> dict[str, Any]:
    """The plan's quiesce/resume commands, in order, each must succeed. They are service
    stop/start commands: running them again after a crash is harmless."""
    from upgrader.ports import Command

    def run(_: dict[str, Any]) -> dict[str, Any]:
        shell = ctx.ports.shells.connect(role)
        for command in commands:
            result = shell.run(Command.raw(command), timeout=300, on_output=ctx.output_sink(key))
            if not result.ok:
                raise StepFailed(f"{what} on {role}: `{command}` exited {result.rc}:\n{result.tail()}")
        return {"commands": len(commands)}

    return ctx.once(key, f"{what} on {role} ({len(commands)} command(s))", run)


class Presync:
    phase = Phase.PRESYNC

    def describe(self, plan: "Plan") -> list[str]:
        policy = plan.sync.presync
        paths = ", ".join(p.path for p in plan.sync.paths)
        return [
            f"rsync {paths} prod -> twin while prod serves, through the orchestrator (networks stay apart)",
            f"repeat until a pass moves <= {policy.until_files} files and <= {policy.until_bytes} bytes "
            f"(at most {policy.max_passes} passes); the last pass's duration is the downtime forecast",
            f"merge {plan.twin_name}'s checkpoints back into its disk (no revert after this; a failure holds the run)",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        policy = ctx.plan.sync.presync
        passes: list[dict[str, Any]] = []
        for n in range(1, policy.max_passes + 1):
            stats = sync_once(ctx, f"presync.pass[{n}]", "prod", "staging", final=False)
            passes.append(stats)
            if stats["files"] <= policy.until_files and stats["bytes"] <= policy.until_bytes:
                break
        else:
            ctx.emit(Notice(f"pre-sync did not converge in {policy.max_passes} passes; the forecast is the last pass", "warning"))
        forecast = passes[-1]["seconds"]
        ctx.emit(Notice(f"downtime forecast: {forecast:.1f} s for the final sync (last of {len(passes)} pass(es))"))
        merge_checkpoints(ctx)  # the twin's chain as clone made it before the cutover; a failure here holds
        return Outcome({"passes": len(passes), "forecast_seconds": forecast})
