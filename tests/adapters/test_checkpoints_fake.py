"""Twin checkpoints on the fake hypervisor: the disk layout of upgrader/checkpoints.py, the guest's
state restored exactly by a revert, nothing leaked by a merge, a teardown or a process killed at
the fake's pause points. (The libvirt adapter does the same on the lab: tests/e2e/test_checkpoints_lab.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from upgrader.errors import InputError, StepFailed, UnsafeOperation
from upgrader.ports import cmd
from upgrader.testing.crash import guest, op_counts, world_of
from upgrader.testing.fakes import FakeHypervisor, FakeShells, WorldFile, new_world

REPO = Path(__file__).resolve().parents[2]
TWIN = "mailhost-twin"
BASE, PROD_OVERLAY = "/fake/mailhost.qcow2", "/fake/mailhost.snap.qcow2"
TWIN_OVERLAY = "/fake/mailhost.mailhost-twin.qcow2"


def ckpt_file(name: str, generation: int = 0) -> str:
    return f"/fake/{TWIN}.vda.ckpt-{name}{f'.r{generation}' if generation else ''}.qcow2"


@pytest.fixture
def wf(tmp_path: Path) -> WorldFile:
    """prod on its snapshot overlay, the twin on its own overlay over the base, running."""
    world = WorldFile(tmp_path / "world.json")
    world.write({**new_world(), "commands": [{"match": r"^touch ", "role": "staging"}]})  # what write() runs
    hv = FakeHypervisor(world)
    hv.clone("mailhost", TWIN, hv.snapshot("mailhost", "snap", None), "stg-net")
    hv.start(TWIN)
    return world


def write(wf: WorldFile, path: str) -> None:
    """A command on the twin that leaves `path` on its disk (the fake keeps it in guest files)."""
    result = FakeShells(wf, {"staging": "stg-net"}).connect("staging").run(cmd("touch {}", path), mark=path)
    assert result.ok


def files(wf: WorldFile) -> list[str]:
    return list(guest(world_of(wf), TWIN)["files"])


def images(wf: WorldFile) -> set[str]:
    return set(world_of(wf)["images"])


def set_size(wf: WorldFile, path: str, size: int) -> None:
    with wf.change() as world:
        world["images"][path]["size"] = size


def test_checkpoint_puts_every_disk_on_an_overlay_once(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    point = hv.checkpoint(TWIN, "upgrade[0]")
    assert point.name == "upgrade[0]" and point.disks == {"vda": TWIN_OVERLAY}
    assert hv.domain(TWIN).disks == {"vda": ckpt_file("upgrade[0]")}  # type: ignore[union-attr]
    assert world_of(wf)["images"][ckpt_file("upgrade[0]")]["backing"] == TWIN_OVERLAY
    assert hv.checkpoint(TWIN, "upgrade[0]") == point  # again: the same one, no second overlay
    assert hv.find_checkpoint(TWIN, "upgrade[0]") == point
    assert op_counts(world_of(wf))["checkpoint"] == 1
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt_file("upgrade[0]")}


def test_checkpoints_oldest_first_with_the_bytes_written_since(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    hv.checkpoint(TWIN, "c2")
    set_size(wf, ckpt_file("c1"), 5_000_000)
    set_size(wf, ckpt_file("c2"), 700_000)
    assert [(c.name, c.disks["vda"], c.bytes) for c in hv.checkpoints(TWIN)] == [
        ("c1", TWIN_OVERLAY, 5_700_000), ("c2", ckpt_file("c1"), 700_000)]
    assert hv.find_checkpoint(TWIN, "c3") is None
    assert hv.checkpoints("mailhost") == [] and hv.checkpoints("nope") == []
    assert hv.find_checkpoint("nope", "c1") is None


def test_revert_restores_the_guest_exactly_and_deletes_what_came_after(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    write(wf, "/before")
    with wf.change() as world:
        guest(world, TWIN)["release"] = "1.5"
    at_c1 = {k: v for k, v in guest(world_of(wf), TWIN).items() if k != "boot_id"}
    hv.checkpoint(TWIN, "c1")
    write(wf, "/after-c1")
    with wf.change() as world:
        guest(world, TWIN)["release"] = "2"
        guest(world, TWIN)["mail"].append("late")
    hv.checkpoint(TWIN, "c2")
    write(wf, "/after-c2")
    set_size(wf, ckpt_file("c1"), 3_000_000)
    set_size(wf, ckpt_file("c2"), 1_000_000)
    hv.destroy(TWIN)

    freed = hv.revert_checkpoint(TWIN, "c1")

    assert freed == 4_000_000
    after = guest(world_of(wf), TWIN)
    assert {k: v for k, v in after.items() if k != "boot_id"} == at_c1  # both later files gone, release back
    assert "/after-c1" not in after["files"] and "/after-c2" not in after["files"]
    assert hv.domain(TWIN).disks == {"vda": ckpt_file("c1", 1)}  # type: ignore[union-attr]
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt_file("c1", 1)}
    assert [(c.name, c.disks) for c in hv.checkpoints(TWIN)] == [("c1", {"vda": TWIN_OVERLAY})]  # c2 is gone

    hv.start(TWIN)  # the checkpoint stays: revert to it again
    write(wf, "/third")
    hv.destroy(TWIN)
    hv.revert_checkpoint(TWIN, "c1")
    assert "/third" not in files(wf) and "/before" in files(wf)
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt_file("c1", 2)}
    assert op_counts(world_of(wf))["revert_checkpoint"] == 2


def test_revert_is_refused_while_the_twin_runs_and_for_unknown_names(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    before = world_of(wf)
    with pytest.raises(UnsafeOperation, match="running") as refused:
        hv.revert_checkpoint(TWIN, "c1")
    assert refused.value.hint and "stop" in refused.value.hint
    assert world_of(wf) == before  # nothing changed
    hv.destroy(TWIN)
    with pytest.raises(StepFailed, match="no checkpoint c9") as unknown:
        hv.revert_checkpoint(TWIN, "c9")
    assert unknown.value.hint == "it has: c1"
    with pytest.raises(InputError, match="bad checkpoint name"):
        hv.checkpoint(TWIN, "../x")
    with pytest.raises(InputError):
        hv.checkpoint(TWIN, "a.b")


@pytest.mark.parametrize("running", [True, False])
def test_merge_restores_the_chain_clone_made_and_keeps_the_data(wf: WorldFile, running: bool) -> None:
    hv = FakeHypervisor(wf)
    chains = hv.disk_chains(TWIN)
    hv.checkpoint(TWIN, "c1")
    write(wf, "/one")
    hv.checkpoint(TWIN, "c2")
    write(wf, "/two")
    set_size(wf, ckpt_file("c2"), 1_000_000)
    if not running:
        hv.destroy(TWIN)
    freed = hv.merge_checkpoints(TWIN)
    assert freed == 196608 + 1_000_000
    assert hv.disk_chains(TWIN) == chains == [[TWIN_OVERLAY, BASE]]
    assert {"/one", "/two"} <= set(files(wf))
    assert hv.checkpoints(TWIN) == [] and images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY}
    assert hv.merge_checkpoints(TWIN) == 0  # idempotent
    assert op_counts(world_of(wf))["merge_checkpoints"] == 1


def test_teardown_of_a_twin_with_checkpoints_leaks_nothing(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    hv.checkpoint(TWIN, "c2")
    hv.destroy(TWIN)
    assert hv.disk_chains(TWIN) == [[ckpt_file("c2"), ckpt_file("c1"), TWIN_OVERLAY, BASE]]
    hv.undefine(TWIN)
    assert images(wf) == {BASE, PROD_OVERLAY}
    hv.merge_back("mailhost", hv.find_snapshot("mailhost", "snap"))  # type: ignore[arg-type]
    assert images(wf) == {BASE}


def test_remove_orphans_takes_the_checkpoints_of_a_twin_undefined_by_a_killed_teardown(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    hv.checkpoint(TWIN, "c2")
    hv.destroy(TWIN)
    assert hv.remove_orphans(TWIN, {"vda": BASE}) == 0  # all in use: nothing goes
    with wf.change() as world:  # killed between libvirt's undefine and the image deletions
        del world["domains"][TWIN]
    hv.remove_orphans(TWIN, {"vda": BASE})
    assert images(wf) == {BASE, PROD_OVERLAY}


def test_flatten_merges_the_checkpoints_first(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    hv.flatten(TWIN)
    assert hv.disk_chains(TWIN) == [[TWIN_OVERLAY]] and images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY}


# ----------------------------------------------------------------- killed at the pause points

def kill_at(wf: WorldFile, point: str, call: str) -> None:
    """Run `FakeHypervisor(world).<call>` in a new process, SIGKILL it at the pause point."""
    reached = wf.path.with_name("reached")
    code = (f"from pathlib import Path\nfrom upgrader.testing.fakes import FakeHypervisor, WorldFile\n"
            f"FakeHypervisor(WorldFile(Path({str(wf.path)!r}))).{call}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "UPGRADER_TEST_PAUSE": point, "UPGRADER_TEST_PAUSE_FILE": str(reached)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not reached.exists():
        assert proc.poll() is None, f"ended before {point}: {proc.communicate()[0].decode()[-2000:]}"
        assert time.monotonic() < deadline, f"{point} not reached"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert reached.read_text().strip() == point


def test_killed_between_the_overlay_and_the_switch_the_checkpoint_is_made_once(wf: WorldFile) -> None:
    kill_at(wf, "during:checkpoint:c1", "checkpoint('mailhost-twin', 'c1')")
    hv = FakeHypervisor(wf)
    assert ckpt_file("c1") in images(wf) and hv.find_checkpoint(TWIN, "c1") is None  # a leftover
    assert hv.checkpoint(TWIN, "c1").disks == {"vda": TWIN_OVERLAY}
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt_file("c1")}
    assert op_counts(world_of(wf))["checkpoint"] == 1


def test_killed_after_the_checkpoint_a_resumed_caller_finds_it(wf: WorldFile) -> None:
    kill_at(wf, "after:checkpoint:c1", "checkpoint('mailhost-twin', 'c1')")
    hv = FakeHypervisor(wf)
    assert hv.find_checkpoint(TWIN, "c1") is not None
    hv.checkpoint(TWIN, "c1")
    assert op_counts(world_of(wf))["checkpoint"] == 1


def prepare_revert(wf: WorldFile) -> dict[str, Any]:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    at_c1 = {k: v for k, v in guest(world_of(wf), TWIN).items() if k != "boot_id"}
    write(wf, "/a")
    hv.checkpoint(TWIN, "c2")
    write(wf, "/b")
    hv.destroy(TWIN)
    return at_c1


def test_killed_between_the_switch_and_the_deletions_revert_again_finishes(wf: WorldFile) -> None:
    at_c1 = prepare_revert(wf)
    kill_at(wf, "during:revert_checkpoint:c1", "revert_checkpoint('mailhost-twin', 'c1')")
    assert ckpt_file("c2") in images(wf)  # switched, not yet deleted
    assert {k: v for k, v in guest(world_of(wf), TWIN).items() if k != "boot_id"} == at_c1
    FakeHypervisor(wf).revert_checkpoint(TWIN, "c1")
    assert {k: v for k, v in guest(world_of(wf), TWIN).items() if k != "boot_id"} == at_c1
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt_file("c1", 2)}


def test_killed_in_a_revert_then_torn_down_nothing_leaks(wf: WorldFile) -> None:
    prepare_revert(wf)
    kill_at(wf, "during:revert_checkpoint:c1", "revert_checkpoint('mailhost-twin', 'c1')")
    FakeHypervisor(wf).undefine(TWIN)  # abort instead of a second revert
    assert images(wf) == {BASE, PROD_OVERLAY}


def test_killed_in_a_merge_merge_again_finishes(wf: WorldFile) -> None:
    hv = FakeHypervisor(wf)
    hv.checkpoint(TWIN, "c1")
    write(wf, "/a")
    hv.checkpoint(TWIN, "c2")
    kill_at(wf, "during:merge_checkpoints", "merge_checkpoints('mailhost-twin')")
    assert hv.disk_chains(TWIN) == [[TWIN_OVERLAY, BASE]] and ckpt_file("c1") in images(wf)
    assert hv.merge_checkpoints(TWIN) == 2 * 196608
    assert images(wf) == {BASE, PROD_OVERLAY, TWIN_OVERLAY} and "/a" in files(wf)
    assert op_counts(world_of(wf))["merge_checkpoints"] == 1
