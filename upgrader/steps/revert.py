"""revert: a held run's twin back to the checkpoint taken before upgrade[N] (`upgrader revert
HOST --to upgrade[N]`), then the journal rewinds so N and every step after it run again.

Each revert is the n-th (n = reverts finished so far) and its side effects are `once`s keyed
`revert[n].*`: stop the twin, put its disks back (the hypervisor's `revert_checkpoint`: a new
empty overlay over the checkpoint's frozen images, every later image deleted), start it, wait for
SSH. Then one `rewind` entry forgets the steps to run again; it is the revert's last word, so a
revert killed anywhere before it is finished by the next `revert`, `retry` or `resume` (to the
target it journaled), and one killed after it is not done twice."""

from __future__ import annotations

from typing import Any

from upgrader.checkpoints import parse as parse_checkpoint
from upgrader.errors import IllegalAction, StepFailed, UnsafeOperation
from upgrader.step_keys import MERGE_KEY, revert_targets, run_again_after, upgrade_index
from upgrader.steps.base import Journal, StepContext
from upgrader.steps.identity import require_ours



def index_of(step: str) -> int:
    index = upgrade_index(step)
    if index is None:
        raise IllegalAction(f"{step!r} is not an upgrade step", hint="give it as upgrade[N], e.g. --to 'upgrade[3]'")
    return index


def prefix(journal: Journal) -> str:
    return f"revert[{journal.rewinds + journal.reverts_given_up}]"


def pending(journal: Journal) -> str | None:
    """The target of a revert that began and did not finish (killed before its rewind): the twin
    may be stopped or its disks half back, so nothing but that revert may run on it."""
    begin = journal.begun.get(f"{prefix(journal)}.stop")
    if begin is not None and begin.get("to"):
        return str(begin["to"])
    return journal.given_up_for


def check_target(ctx: StepContext, to: str) -> None:
    """Refused (IllegalAction, nothing changed) unless a checkpoint before `to` exists. A revert
    to another step that was interrupted is given up for this one (its disks are discarded
    anyway; the adapter removes what a killed revert left)."""
    index_of(to)
    targets = revert_targets(ctx.journal.done)
    if MERGE_KEY in ctx.journal.done:
        raise IllegalAction("the twin's checkpoints were merged back before the cutover: nothing to revert to")
    if MERGE_KEY in ctx.journal.begun:
        raise IllegalAction("merging the twin's checkpoints back began (the end of the pre-sync): they may be gone",
                            hint=f"`upgrader retry {ctx.record.host}` finishes the merge, `upgrader abort {ctx.record.host}` ends the run")
    if to not in targets:
        raise IllegalAction(f"no checkpoint was taken before {to}",
                            hint=("checkpoints: " + ", ".join(targets) if targets else "no checkpoint yet")
                            + f"; `upgrader checkpoints {ctx.record.host}` lists them with their sizes, "
                              "and `checkpoint: true` on a step takes one before it")


def give_up_pending(ctx: StepContext, to: str) -> None:
    """An interrupted revert to another step is replaced by this one: journaled first, so a kill
    right after still finishes a revert (this one) before anything else runs on the twin."""
    going = pending(ctx.journal)
    if going is not None and going != to:
        ctx.journal.write("revert_given_up", to=going, **{"for": to})


def run_again(ctx: StepContext, to: str) -> list[str]:
    return run_again_after(to, {*ctx.journal.begun, *ctx.journal.done})


def revert_twin(ctx: StepContext, to: str) -> dict[str, Any]:
    """Stop the twin, put its disks back to the checkpoint before `to`, start it, wait for SSH,
    rewind the journal. Returns what it did (bytes freed, the keys to run again)."""
    check_target(ctx, to)
    give_up_pending(ctx, to)
    hv, twin, p = ctx.ports.hypervisor, ctx.plan.twin_name, prefix(ctx.journal)

    def stop(_: dict[str, Any]) -> dict[str, Any]:
        info = require_ours(ctx, twin, "stop")
        if info is None:
            raise UnsafeOperation(f"{twin} is gone: nothing to revert", hint=f"`upgrader abort {ctx.record.host}` ends the run")
        if info.running:
            hv.destroy(twin)
        return {}

    def stopped(_: dict[str, Any]) -> dict[str, Any] | None:
        info = hv.domain(twin)
        return {} if info is not None and not info.running else None

    ctx.once(f"{p}.stop", f"stop {twin} (its disks go back to before {to})", stop, stopped, lambda: {"to": to})
    def active_disks() -> dict[str, Any]:
        info = hv.domain(twin)
        return {"disks_before": dict(info.disks) if info else {}}

    def reverted(begin: dict[str, Any]) -> dict[str, Any] | None:
        """Every disk on a new revert overlay of `to` (not the one it had before this revert).
        Otherwise the revert runs again: the same disks, the twin was not started in between."""
        info = hv.domain(twin)
        if info is None or not info.disks or info.disks == begin.get("disks_before"):
            return None
        for target, path in info.disks.items():
            parsed = parse_checkpoint(path, twin)
            if parsed is None or parsed[0] != target or parsed[1] != to or parsed[2] == 0:
                return None
        return {"bytes_freed": 0, "probed": True}

    disks = ctx.once(f"{p}.disks", f"put {twin}'s disks back to the checkpoint before {to}",
                     lambda _: {"bytes_freed": hv.revert_checkpoint(twin, to)}, reverted, active_disks)

    def running(_: dict[str, Any]) -> dict[str, Any] | None:
        info = hv.domain(twin)
        return {"running": True} if info is not None and info.running else None

    def start(_: dict[str, Any]) -> dict[str, Any]:
        hv.start(twin)
        return {"running": True}

    ctx.once(f"{p}.start", f"start {twin}", start, running)

    def wait_ssh(_: dict[str, Any]) -> dict[str, Any]:
        boot_id = ctx.ports.shells.connect("staging").boot_id()
        if not boot_id:
            raise StepFailed(f"{twin} answered SSH but reported no boot id")
        return {"boot_id": boot_id}

    ctx.once(f"{p}.ssh", f"wait for SSH on {twin}", wait_ssh, lambda _: None)
    keys = run_again(ctx, to)
    ctx.journal.write("rewind", to=to, keys=keys)
    return {"bytes_freed": disks.get("bytes_freed", 0), "run_again": keys}
