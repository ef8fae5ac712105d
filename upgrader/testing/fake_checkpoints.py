"""Checkpoints on the fake hypervisor, with the adapter's disk layout (upgrader/checkpoints.py):
a checkpoint overlay records the guest's state when it was taken (world images[path].checkpoint),
and a revert restores exactly that, so a file written since is gone.

Pause points (upgrader/testing/hooks.py): `during:checkpoint:NAME` (overlays made, the disks not
switched), `after:checkpoint:NAME`; `during:revert_checkpoint:NAME` (switched, the images above
not yet deleted), `after:revert_checkpoint:NAME`; `during:merge_checkpoints`,
`after:merge_checkpoints`. Effects: checkpoint, revert_checkpoint, merge_checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any

from upgrader import checkpoints as ckpt
from upgrader.errors import StepFailed, UnsafeOperation
from upgrader.ports import Checkpoint
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import World, WorldFile, chains_of, domain_of, effect, is_used


class FakeCheckpoints:
    """The checkpoint half of FakeHypervisor."""

    world: WorldFile

    def checkpoint(self, domain: str, name: str) -> Checkpoint:
        """Like the adapter: the overlays are made first, the disks switched after (pause point
        `during:checkpoint:NAME` in between: a leftover the next call removes)."""
        ckpt.check_name(name)
        found = self.find_checkpoint(domain, name)
        if found is not None:
            return found
        with self.world.change() as world:
            dom = domain_of(world, domain)
            collect_checkpoints(world, domain)
            overlays = {}
            for target, active in dom["disks"].items():
                overlay = ckpt.overlay_path(_folder(active), domain, target, name)
                if overlay in world["images"]:
                    raise StepFailed(f"fake: {overlay} exists already and is in use")
                world["images"][overlay] = {"size": EMPTY_OVERLAY, "backing": active}
                overlays[target] = overlay
        maybe_pause(f"during:checkpoint:{name}")
        with self.world.change() as world:
            dom = domain_of(world, domain)
            state = _disk_state(world["guests"][dom["guest"]])
            for target, overlay in overlays.items():
                if world["images"].get(overlay, {}).get("backing") != dom["disks"][target]:
                    raise StepFailed(f"fake: overlay {overlay} is gone or not over {dom['disks'][target]}")
                world["images"][overlay]["checkpoint"] = {"name": name, "guest": copy.deepcopy(state)}
                dom["disks"][target] = overlay
            effect(world, "checkpoint", domain=domain, name=name)
        maybe_pause(f"after:checkpoint:{name}")
        found = self.find_checkpoint(domain, name)
        assert found is not None
        return found

    def find_checkpoint(self, domain: str, name: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints(domain) if c.name == name), None)

    def checkpoints(self, domain: str) -> list[Checkpoint]:
        world = self.world.read()
        if domain not in world["domains"]:
            return []
        return _checkpoints(world, domain)

    def revert_checkpoint(self, domain: str, name: str) -> int:
        """New overlays first, then the switch (the guest's state restored with it), pause point
        `during:revert_checkpoint:NAME`, then the images above the frozen ones are deleted."""
        ckpt.check_name(name)
        with self.world.change() as world:
            dom = domain_of(world, domain)
            if dom["running"]:
                raise UnsafeOperation(f"fake: {domain} is running; a checkpoint is restored only while it is shut off",
                                      hint=f"stop {domain} first")
            target_ckpt = _require_checkpoint(world, domain, name)
            collect_checkpoints(world, domain)
            fresh = {}
            for target, chain in zip(dom["disks"], chains_of(world, domain)):
                frozen = target_ckpt.disks[target]
                top = ckpt.above(domain, chain, frozen)[-1]  # the checkpoint's own overlay
                generation = ckpt.parse(top, domain)[2] + 1  # type: ignore[index]
                path = ckpt.overlay_path(_folder(top), domain, target, name, generation)
                if path in world["images"]:
                    raise StepFailed(f"fake: {path} exists already and is in use")
                world["images"][path] = {"size": EMPTY_OVERLAY, "backing": frozen,
                                         "checkpoint": copy.deepcopy(world["images"][top]["checkpoint"])}
                fresh[target] = path
        with self.world.change() as world:
            dom = domain_of(world, domain)
            if dom["running"]:
                raise UnsafeOperation(f"fake: {domain} was started during the revert")
            dom["disks"].update(fresh)
            guest = world["guests"][dom["guest"]]
            saved = world["images"][next(iter(fresh.values()))]["checkpoint"]["guest"]
            world["guests"][dom["guest"]] = {**copy.deepcopy(saved), "boot_id": guest["boot_id"]}
            effect(world, "revert_checkpoint", domain=domain, name=name)
        maybe_pause(f"during:revert_checkpoint:{name}")  # switched; the images above not yet deleted
        with self.world.change() as world:
            freed = collect_checkpoints(world, domain)
        maybe_pause(f"after:revert_checkpoint:{name}")
        return freed

    def merge_checkpoints(self, domain: str) -> int:
        """Commit every checkpoint overlay into the image clone made (running or not), switch the
        disks to it, pause point `during:merge_checkpoints`, then delete the merged images."""
        with self.world.change() as world:
            dom = domain_of(world, domain)
            merged = False
            for target, chain in zip(list(dom["disks"]), chains_of(world, domain)):
                index = ckpt.lowest(domain, chain)
                if index is None:
                    continue
                base = chain[index + 1]
                written = sum(world["images"][p]["size"] - EMPTY_OVERLAY for p in ckpt.above(domain, chain, base))
                world["images"][base]["size"] += max(0, written)
                dom["disks"][target] = base
                merged = True
            if merged:
                effect(world, "merge_checkpoints", domain=domain)
        if merged:
            maybe_pause("during:merge_checkpoints")  # switched; the merged images not yet deleted
        with self.world.change() as world:
            freed = collect_checkpoints(world, domain)
        if merged:
            maybe_pause("after:merge_checkpoints")
        return freed


EMPTY_OVERLAY = 196608  # what a new qcow2 overlay takes on disk


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0]


def _disk_state(guest: dict[str, Any]) -> dict[str, Any]:
    """What of the fake guest lives on its disk (all but the boot id)."""
    return {k: v for k, v in guest.items() if k != "boot_id"}


def _checkpoints(world: World, domain: str) -> list[Checkpoint]:
    chains = dict(zip(domain_of(world, domain)["disks"], chains_of(world, domain)))
    return ckpt.in_chains(domain, chains, lambda p: int(world["images"].get(p, {}).get("size", 0)))


def _require_checkpoint(world: World, domain: str, name: str) -> Checkpoint:
    found = {c.name: c for c in _checkpoints(world, domain)}
    if name not in found:
        raise StepFailed(f"fake: {domain} has no checkpoint {name}", hint=f"it has: {', '.join(found) or 'none'}")
    return found[name]


def collect_checkpoints(world: World, domain: str) -> int:
    """Delete `domain`'s checkpoint overlays that no domain and no image uses (what a revert or a
    merge left above the images it switched to, or a killed call's leftovers), top down."""
    freed = 0
    while True:
        unused = [p for p in world["images"] if ckpt.parse(p, domain) is not None and not is_used(world, p)]
        if not unused:
            return freed
        for path in unused:
            freed += world["images"].pop(path)["size"]
