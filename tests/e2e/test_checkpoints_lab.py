"""Twin checkpoints with the libvirt adapter on the lab's real libvirtd and a TCG guest: taken on a
shut-off and on a running twin (a killed attempt's leftover file in the way), reverted (files
written since are gone, no image left behind), merged back on the running twin (the chain clone
made, the data kept) and on the shut-off one, and a twin torn down with checkpoints leaks
nothing. The fake's semantics: tests/adapters/test_checkpoints_fake.py."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from upgrader.errors import UnsafeOperation
from upgrader.lab import Lab
from upgrader.lab import config as C

if TYPE_CHECKING:
    from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor

pytestmark = pytest.mark.lab

TWIN = "mailhost-twin"
SNAP = "ckpt-test"
BASE, PROD_OVERLAY, TWIN_OVERLAY = "mailhost.qcow2", f"mailhost.{SNAP}.qcow2", "mailhost.mailhost-twin.qcow2"


def ckpt(name: str, generation: int = 0) -> str:
    return f"{TWIN}.vda.ckpt-{name}{f'.r{generation}' if generation else ''}.qcow2"


@pytest.fixture
def lab_without_twin(lab: Lab) -> Iterator[Lab]:
    lab.pristine()
    yield lab
    for info, _ in lab.domains():  # a failed test's twin and checkpoint files go too (conftest: pristine)
        if info.name != C.MAILHOST:
            lab.remove_guest(info.name)
    for left in lab.paths.images.glob(f"{TWIN}.*.qcow2"):
        left.unlink()


def on_twin(lab: Lab, command: str) -> str:
    return lab.guest_exec("staging", command).stdout.strip()


def leftover(path: Path, backing: Path) -> None:
    """What a process killed between `qemu-img create` and the switch leaves."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(path)], check=True)


def boot(lab: Lab, hv: "LibvirtHypervisor") -> None:
    hv.start(TWIN)
    lab.wait_ssh("staging", timeout=180)


def test_checkpoint_revert_merge_and_teardown_on_a_real_twin(lab_without_twin: Lab) -> None:
    from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor

    lab = lab_without_twin
    hv = LibvirtHypervisor(lab.uri)
    images = lab.paths.images
    snap = hv.snapshot(C.MAILHOST, SNAP, None)
    hv.clone(C.MAILHOST, TWIN, snap, C.BR_STG)
    clone_chains = hv.disk_chains(TWIN)
    assert clone_chains == [[str(images / TWIN_OVERLAY), str(images / BASE)]]

    # shut off, as clone leaves it: an offline checkpoint; asked again, the same one
    c0 = hv.checkpoint(TWIN, "c0")
    assert c0.disks == {"vda": str(images / TWIN_OVERLAY)}
    assert hv.checkpoint(TWIN, "c0") == c0 and hv.domain(TWIN).disks == {"vda": str(images / ckpt("c0"))}  # type: ignore[union-attr]

    boot(lab, hv)
    started = time.monotonic()
    c1 = hv.checkpoint(TWIN, "c1")  # running: O(1)
    took = time.monotonic() - started
    on_twin(lab, "echo a > /root/ckpt-a && sync")
    leftover(images / ckpt("c2"), images / ckpt("c1"))
    hv.checkpoint(TWIN, "c2")  # the leftover of that name is removed first
    on_twin(lab, "echo b > /root/ckpt-b && sync")
    listed = hv.checkpoints(TWIN)
    assert [c.name for c in listed] == ["c0", "c1", "c2"]
    assert listed[1].disks == c1.disks == {"vda": str(images / ckpt("c0"))}
    assert listed[0].bytes >= listed[1].bytes >= listed[2].bytes > 0
    with pytest.raises(UnsafeOperation, match="running"):
        hv.revert_checkpoint(TWIN, "c1")

    hv.destroy(TWIN)
    leftover(images / ckpt("c1", 1), images / ckpt("c0"))  # where the revert's overlay goes, on the wrong image
    freed = hv.revert_checkpoint(TWIN, "c1")
    assert freed > 0
    assert [c.name for c in hv.checkpoints(TWIN)] == ["c0", "c1"]
    assert lab.image_names() == {BASE, PROD_OVERLAY, TWIN_OVERLAY, ckpt("c0"), ckpt("c1", 1)}
    boot(lab, hv)
    assert on_twin(lab, "ls /root/ckpt-a /root/ckpt-b 2>/dev/null; true") == ""  # both written after c1: gone

    # merge on the running twin: back to the chain clone made, the data kept
    hv.checkpoint(TWIN, "c3")
    on_twin(lab, "echo c > /root/ckpt-c && sync")
    assert hv.merge_checkpoints(TWIN) > 0
    assert hv.disk_chains(TWIN) == clone_chains and hv.checkpoints(TWIN) == []
    assert lab.image_names() == {BASE, PROD_OVERLAY, TWIN_OVERLAY}
    assert on_twin(lab, "cat /root/ckpt-c") == "c"
    assert hv.merge_checkpoints(TWIN) == 0

    # shut off: merged by qemu-img commit
    hv.checkpoint(TWIN, "c4")
    on_twin(lab, "echo d > /root/ckpt-d && sync")
    hv.destroy(TWIN)
    assert hv.merge_checkpoints(TWIN) > 0
    assert hv.disk_chains(TWIN) == clone_chains and lab.image_names() == {BASE, PROD_OVERLAY, TWIN_OVERLAY}

    # torn down with checkpoints: every file of the twin goes
    hv.checkpoint(TWIN, "c5")
    hv.checkpoint(TWIN, "c6")
    hv.undefine(TWIN)
    assert lab.image_names() == {BASE, PROD_OVERLAY}
    hv.merge_back(C.MAILHOST, snap)
    assert lab.image_names() == {BASE}
    print(f"checkpoint of the running twin took {took * 1000:.0f} ms; revert freed {freed} bytes")
