#!/usr/bin/env python3
"""Snapshot + clone against a full copy, by disk size, on the lab's libvirtd with the real
libvirt adapter (the calls a run makes).

    .venv/bin/python bench/snapshot_clone.py [--sizes 100M 10G] [--fill 1G]

For each size: a LabOS guest on the isolated staging segment gets a data disk (qcow2) of that
virtual size, of which min(size, --fill) is written with non-zero data (the rest stays sparse).
Timed: the external disk-only snapshot of the running guest (every disk), defining the twin on
new overlays (the clone step without the boot), and the full-copy baseline `qemu-img convert -O
qcow2` of the data disk (what copying the VM would cost, before it even boots). Reported with the
bytes each leaves on disk. Afterwards the twin is removed and the overlay merged back (also timed).
Needs root; brings the lab up and (without --keep) down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from labrun import allocated, lab_session, machine  # noqa: I001

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.lab import Lab
from upgrader.lab import config as C

GUEST = "bench-vm"


def size_bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def timed(fn: Any) -> tuple[Any, float]:
    started = time.monotonic()
    value = fn()
    return value, round(time.monotonic() - started, 3)


def one(lab: Lab, hv: LibvirtHypervisor, size: str, fill: int) -> dict[str, Any]:
    images = lab.paths.images
    data = images / f"bench-data-{size}.qcow2"
    copy = images / f"bench-copy-{size}.qcow2"
    for leftover in (data, copy):
        leftover.unlink(missing_ok=True)
    total = size_bytes(size)
    written = min(total, fill)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), str(total)], check=True)
    chunk = 1 << 30  # qemu-io refuses a single request of several GiB
    writes = [arg for off in range(0, written, chunk) for arg in ("-c", f"write -P 0xa5 {off} {min(chunk, written - off)}")]
    subprocess.run(["qemu-io", "-f", "qcow2", *writes, str(data)], check=True, stdout=subprocess.DEVNULL)
    lab.remove_guest(GUEST)
    lab.add_guest(GUEST, C.Segment.STAGING)
    with lab.libvirt_conn() as conn:
        import libvirt

        dom = conn.lookupByName(GUEST)
        xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{data}'/>"
               "<target dev='vdb' bus='virtio'/></disk>")
        dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    twin = f"{GUEST}-twin"
    try:
        snap, t_snap = timed(lambda: hv.snapshot(GUEST, "upgrader-bench", None))
        twin_info, t_clone = timed(lambda: hv.clone(GUEST, twin, snap, C.BR_STG))
        overlays = [Path(p) for p in list(snap.overlays.values()) + list(twin_info.disks.values())]
        overlay_bytes = sum(allocated(p) for p in overlays)
        _, t_copy = timed(lambda: subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(data), str(copy)], check=True))
        copy_bytes = allocated(copy)
        _, t_undefine = timed(lambda: hv.undefine(twin))
        _, t_merge = timed(lambda: hv.merge_back(GUEST, snap))
    finally:
        if hv.domain(twin) is not None:
            hv.undefine(twin)
        lab.remove_guest(GUEST)
        for path in (data, copy):
            path.unlink(missing_ok=True)
        for stray in images.glob(f"*.{twin}.qcow2"):
            stray.unlink()
        for stray in images.glob("*.upgrader-bench.qcow2"):
            stray.unlink()
    both = t_snap + t_clone
    return {"size": size, "written": written, "snapshot_s": t_snap, "clone_define_s": t_clone,
            "snapshot_plus_clone_s": round(both, 3), "overlay_bytes": overlay_bytes,
            "copy_s": t_copy, "copy_bytes": copy_bytes, "time_ratio": round(t_copy / both, 1) if both else None,
            "space_ratio": round(copy_bytes / overlay_bytes, 1) if overlay_bytes else None,
            "cleanup_undefine_s": t_undefine, "cleanup_merge_back_s": t_merge}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["100M", "10G"])
    p.add_argument("--fill", default="1G", help="data written into each disk at most (the rest is sparse)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = p.parse_args()
    rows = []
    with lab_session(args.keep) as lab:
        hv = LibvirtHypervisor(lab.uri)
        for size in args.sizes:
            row = one(lab, hv, size, size_bytes(args.fill))
            rows.append(row)
            print(json.dumps(row), flush=True)
    mib = 2**20
    print(f"\nmachine: {machine()}")
    print("| disk (written) | snapshot | define twin on overlays | snapshot + clone | overlays on disk | "
          "qemu-img convert | copy on disk | copy / (snapshot + clone) time | space |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} ({r['written'] / mib:.0f} MiB) | {r['snapshot_s']:.3f} s | {r['clone_define_s']:.3f} s | "
              f"{r['snapshot_plus_clone_s']:.3f} s | {r['overlay_bytes'] / mib:.2f} MiB | {r['copy_s']:.2f} s | "
              f"{r['copy_bytes'] / mib:.0f} MiB | {r['time_ratio']}× | {r['space_ratio']}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
