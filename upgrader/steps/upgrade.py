"""upgrade: the plan's steps on the twin, in order. Each is a `once`: a `run` step writes a
done-marker on the guest right after it succeeds (or the plan gives its own `probe`), a reboot
records the boot id before and is done when the boot id changed. A connection lost mid-step is
handled like a crash there (`once_reconnecting`): reconnect, wait for a command still running,
probe, and redo only what did not finish.

A `run` step with a plan `probe:` asks it on the twin before it first runs: exit 0 means the
step is done already - it is not run and is journaled done as `SkippedByProbe` (the probe's
command and exit code); any other exit runs it. A step in doubt after a crash, or the failed
step of a held run on `retry`, is probed as before (its done-marker, then the plan's probe).

Before the first step, and before every step marked `checkpoint: true`, the twin's disks get a
checkpoint (an O(1) disk-only external snapshot, journaled as `checkpoint.upgrade[N]`): a held
run can `upgrader revert HOST --to upgrade[N]`. They are merged back before the cutover
(`merge_checkpoints`, at the end of presync: a failure there holds the run too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.probe_skip import PROBE_SKIP_REASON, SkippedByProbe
from upgrader.step_keys import MERGE_KEY, checkpoint_key, revert_targets, upgrade_key
from upgrader.phases import Phase
from upgrader.ports import Command, Prompt
from upgrader.ports import PackageProxy as PlaybookProxy
from upgrader.steps import guest, packages
from upgrader.steps.playbook import describe as describe_playbook, run_playbook_step
from upgrader.steps.base import AlreadyDone, Outcome, StepContext
from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import AnsibleStep, Plan, RebootStep, RunStep


def step_key(index: int) -> str:
    return upgrade_key(index)


def takes_checkpoint(plan: "Plan", index: int) -> bool:
    return index == 0 or bool(getattr(plan.upgrade[index], "checkpoint", False))


def take_checkpoint(ctx: StepContext, key: str) -> None:
    """The twin's disks as they are before step `key`: the guest's buffers flushed first (a
    revert then finds what the steps before wrote on disk), then an O(1) external snapshot."""
    hv, twin = ctx.ports.hypervisor, ctx.plan.twin_name

    def take(_: dict[str, Any]) -> dict[str, Any]:
        ctx.ports.shells.connect("staging").run(guest.flush(), timeout=300)
        made = hv.checkpoint(twin, key)
        return {"name": made.name, "disks": made.disks}

    def taken(_: dict[str, Any]) -> dict[str, Any] | None:
        found = hv.find_checkpoint(twin, key)
        return {"name": found.name, "disks": found.disks, "probed": True} if found else None

    ctx.once(checkpoint_key(key), f"checkpoint {twin}'s disks before {key}", take, taken)


def merge_checkpoints(ctx: StepContext) -> None:
    """Before the cutover: fold the twin's checkpoints back, so its chain is the one clone made
    (what rollback and decommission expect). Reverting is not possible after this."""
    if not revert_targets(ctx.journal.done):
        return
    hv, twin = ctx.ports.hypervisor, ctx.plan.twin_name
    ctx.once(MERGE_KEY, f"merge {twin}'s checkpoints back before the cutover",
             lambda _: {"bytes_freed": hv.merge_checkpoints(twin)})


class Upgrade:
    phase = Phase.UPGRADE

    def describe(self, plan: "Plan") -> list[str]:
        lines = packages.describe(plan)
        for i, step in enumerate(plan.upgrade):
            if takes_checkpoint(plan, i):
                lines.append(f"[{i}] checkpoint {plan.twin_name}'s disks first (`upgrader revert HOST --to {step_key(i)}`)")
            if getattr(step, "reboot", False):
                lines.append(f"[{i}] reboot the twin and wait for a new boot id (up to {format_duration(step.timeout)})")
            elif getattr(step, "ansible", None) is not None:
                lines.append(f"[{i}] {describe_playbook(plan, step)}")  # type: ignore[arg-type]
            else:
                answers = f", answering {len(step.expect)} prompt(s)" if step.expect else ""
                probe = f"; skipped if `{step.probe}` exits 0 first" if step.probe else ""
                lines.append(f"[{i}] on the twin: {step.run}{answers} (timeout {format_duration(step.timeout)}){probe}")
        return lines

    def run(self, ctx: StepContext) -> Outcome:
        ctx.ports.shells.connect("staging")
        with packages.proxy_open(ctx) as proxy_env:
            for i, step in enumerate(ctx.plan.upgrade):
                if takes_checkpoint(ctx.plan, i):
                    take_checkpoint(ctx, step_key(i))
                if getattr(step, "reboot", False):
                    self._reboot(ctx, i, step)  # type: ignore[arg-type]
                elif getattr(step, "ansible", None) is not None:
                    self._ansible(ctx, i, step)  # type: ignore[arg-type]
                else:
                    self._run(ctx, i, step, proxy_env)  # type: ignore[arg-type]
        release = ctx.record.outputs.get(step_key(len(ctx.plan.upgrade) - 1), {})
        return Outcome({"steps": len(ctx.plan.upgrade), "last": release})

    def _run(self, ctx: StepContext, i: int, step: "RunStep", proxy_env: dict[str, str]) -> None:
        key, state_dir = step_key(i), ctx.plan.guest_state_dir

        def run(_: dict[str, Any]) -> dict[str, Any]:
            shell = ctx.ports.shells.connect("staging")
            result = shell.run(
                Command.raw(step.run),
                timeout=step.timeout.total_seconds(),
                prompts=[Prompt(p.prompt, p.answer) for p in step.expect],
                env={**proxy_env, **step.env},  # the plan's own env wins
                on_output=ctx.output_sink(key),
                mark=guest.marker_path(state_dir, ctx.run_id, key),
            )
            if not result.ok:
                raise StepFailed(
                    f"{key} `{step.label}` exited {result.rc}:\n{result.tail()}",
                    hint="prod keeps serving; the run is held with the twin kept for repair (plan `on_failure: hold`) "
                         "or aborted (`on_failure: abort`)",
                    result=result,
                )
            return {"rc": result.rc}

        def probe(_: dict[str, Any]) -> dict[str, Any] | None:
            # waits (up to the step's timeout) for a run that outlived its connection
            shell = ctx.ports.shells.connect("staging")
            marked = guest.is_marked(state_dir, ctx.run_id, key)
            if step.probe:
                finished = shell.run(marked, timeout=step.timeout.total_seconds() + 60)
                if finished.rc == 0:
                    return {"rc": 0, "probed": True}
                check = Command.raw(step.probe)
            else:
                check = marked
            return {"rc": 0, "probed": True} if shell.run(check, timeout=step.timeout.total_seconds() + 60).ok else None

        def already_done() -> AlreadyDone | None:
            assert step.probe is not None
            result = ctx.ports.shells.connect("staging").run(Command.raw(step.probe),
                                                             timeout=step.timeout.total_seconds() + 60)
            if not result.ok:
                return None
            return AlreadyDone(SkippedByProbe(probe=result.command, probe_rc=result.rc).model_dump(), PROBE_SKIP_REASON)

        ctx.once_reconnecting(key, step.label, run, probe, skip_if=already_done if step.probe else None)

    def _ansible(self, ctx: StepContext, i: int, step: "AnsibleStep") -> None:
        proxy = ctx.plan.staging.packages
        run_playbook_step(ctx, step_key(i), step, None if proxy is None else PlaybookProxy(
            twin_url=proxy.twin_url, listen_port=proxy.twin_port, host=proxy.proxy_host, port=proxy.proxy_port,
            already_forwarded=True))  # proxy_open holds the forward on upgrader's own connection

    def _reboot(self, ctx: StepContext, i: int, step: "RebootStep") -> None:
        key, timeout = step_key(i), step.timeout.total_seconds()

        def before() -> dict[str, Any]:
            return {"boot_id": ctx.ports.shells.connect("staging").boot_id()}

        def run(begin: dict[str, Any]) -> dict[str, Any]:
            new = ctx.ports.shells.connect("staging").reboot(timeout=timeout)
            return {"boot_id_before": begin["boot_id"], "boot_id": new}

        def probe(begin: dict[str, Any]) -> dict[str, Any] | None:
            current = ctx.ports.shells.connect("staging").boot_id()
            if current != begin.get("boot_id"):
                return {"boot_id_before": begin.get("boot_id"), "boot_id": current, "probed": True}
            return None

        ctx.once_reconnecting(key, "reboot", run, probe, before)
