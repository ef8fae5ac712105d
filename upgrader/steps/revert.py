"""revert: a held run's twin back to the checkpoint taken before upgrade[N] (`upgrader revert
HOST --to upgrade[N]`), then the journal rewinds so N and every step after it run again.

Each revert is the n-th (n = reverts finished so far) and its side effects are `once`s keyed
`revert[n].*`: stop the twin, put its disks back (the hypervisor's `revert_checkpoint`: a new
empty overlay over the checkpoint's frozen images, every later image deleted), start it, wait for
SSH. Then one `rewind` entry forgets the steps to run again; it is the revert's last word, so a
revert killed anywhere before it is finished by the next `revert`, `retry` or `resume` (to the
target it journaled), and one killed after it is not done twice."""

from __future__ import annotations

import re
from typing import Any

from upgrader.checkpoints import parse as parse_checkpoint
from upgrader.errors import IllegalAction, StepFailed, UnsafeOperation
from upgrader.held import CHECKPOINT_PREFIX, revert_targets
from upgrader.steps.base import StepContext
from upgrader.steps.identity import require_ours

_UPGRADE_KEY = re.compile(r"upgrade\[(\d+)\]\Z")
RUN_AGAIN_AFTER = ("validate_staging", "presync.")  # what the upgrade's result feeds: all of it


def index_of(step: str) -> int:
    found = _UPGRADE_KEY.match(step)
    if found is None:
        raise IllegalAction(f"{step!r} is not an upgrade step", hint="give it as upgrade[N], e.g. --to 'upgrade[3]'")
    return int(found.group(1))


def prefix(ctx: StepContext) -> str:
    return f"revert[{ctx.journal.rewinds}]"


def pending(ctx: StepContext) -> str | None:
    """The target of a revert that began and did not finish (killed before its rewind)."""
    begin = ctx.journal.begun.get(f"{prefix(ctx)}.stop")
    return str(begin["to"]) if begin is not None and begin.get("to") else None


def check_target(ctx: StepContext, to: str) -> None:
    index_of(to)
    targets = revert_targets(ctx.journal.done)
    if "checkpoints.merge" in ctx.journal.done:
        raise IllegalAction("the twin's checkpoints were merged back before the cutover: nothing to revert to")
    if to not in targets:
        raise IllegalAction(f"no checkpoint was taken before {to}",
                            hint=("checkpoints: " + ", ".join(targets) if targets else "no checkpoint yet")
                            + f"; `upgrader checkpoints {ctx.record.host}` lists them with their sizes, "
                              "and `checkpoint: true` on a step takes one before it")
    going = pending(ctx)
    if going is not None and going != to:
        raise IllegalAction(f"a revert to {going} was interrupted; it must finish first",
                            hint=f"`upgrader revert {ctx.record.host} --to '{going}'` finishes it")


def run_again(ctx: StepContext, to: str) -> list[str]:
    """The journal keys a revert to `to` forgets: upgrade[N..], the checkpoints after N, the
    validation and the pre-sync."""
    n = index_of(to)
    keys = []
    for key in {*ctx.journal.begun, *ctx.journal.done}:
        step = key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key
        found = _UPGRADE_KEY.match(step)
        if found is not None:
            if int(found.group(1)) > n or (int(found.group(1)) == n and step == key):
                keys.append(key)
        elif key.startswith(RUN_AGAIN_AFTER):
            keys.append(key)
    return sorted(keys)


def revert_twin(ctx: StepContext, to: str) -> dict[str, Any]:
    """Stop the twin, put its disks back to the checkpoint before `to`, start it, wait for SSH,
    rewind the journal. Returns what it did (bytes freed, the keys to run again)."""
    check_target(ctx, to)
    hv, twin, p = ctx.ports.hypervisor, ctx.plan.twin_name, prefix(ctx)

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
