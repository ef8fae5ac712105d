"""Figures of the Debian lab guest (a benchmark is a script, not a test): one line per figure.

    sudo .venv/bin/python bench/debian_lab_times.py [--keep]

`lab up --guest debian` with the image cached (the image build's own figures, cold and through
the warm apt-cacher-ng cache, are in the cached image's manifest.json and printed here), the
per-guest disk, guest start -> SSH banner, -> `systemctl is-system-running`, a libvirt reboot
through GRUB, the guest's memory (`free`) and QEMU's RSS, image sizes, `lab down`.
Uses $UPGRADER_LAB_DIR or the default lab dir. Hold /work/lab.lock (or CI's) around it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from upgrader.lab import Lab, debian_image
from upgrader.lab.daemons import qemu_pids


def timed(label: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    started = time.monotonic()
    value = fn()
    results[label] = round(time.monotonic() - started, 2)
    print(f"{label:<40} {results[label]:8.2f} s", flush=True)
    return value


def show(label: str, value: Any, results: dict[str, Any]) -> None:
    results[label] = value
    print(f"{label:<40} {value}", flush=True)


def start_to_ssh_and_running(lab: Lab, results: dict[str, Any]) -> None:
    with lab.libvirt_conn() as conn:
        dom = conn.lookupByName("mailhost")
        dom.destroy()
        started = time.monotonic()
        dom.create()
    lab.wait_ssh("mailhost", timeout=300)
    show("guest start -> SSH banner (s)", round(time.monotonic() - started, 1), results)
    state = lab.guest_exec("mailhost", "systemctl is-system-running --wait", check=False, timeout=300).stdout.strip()
    show(f"guest start -> is-system-running={state} (s)", round(time.monotonic() - started, 1), results)
    show("systemd-analyze", lab.guest_exec("mailhost", "systemd-analyze", check=False).stdout.splitlines()[0],
         results)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    args = ap.parse_args()
    lab = Lab(os.environ.get("UPGRADER_LAB_DIR"))
    results: dict[str, Any] = {}
    lab.down()
    try:
        measure(lab, results)
    finally:
        if not args.keep:
            timed("lab down", lambda: lab.down(), results)
    print(json.dumps(results), file=sys.stderr)
    return 0


def measure(lab: Lab, results: dict[str, Any]) -> None:
    timed("lab up --guest debian (image cached)", lambda: lab.up(guest="debian", timeout=300), results)
    image = debian_image.cached_image(lab.paths.cache)
    assert image is not None
    for key in ("debootstrap_seconds", "rootfs_bytes"):
        show(f"image {key}", image.manifest.get(key), results)
    show("image disk.raw allocated (MiB)", image.disk_raw.stat().st_blocks * 512 // 2**20, results)
    show("mailhost.qcow2 (MiB)", lab.paths.disk("mailhost").stat().st_size // 2**20, results)
    start_to_ssh_and_running(lab, results)
    timed("libvirt reboot (GRUB) -> new boot id", lambda: lab.reboot("mailhost", timeout=300), results)
    lab.guest_exec("mailhost", "systemctl is-system-running --wait", check=False, timeout=300)
    mem = lab.guest_exec("mailhost", "free -m | awk '/^Mem:/ {print $2, $3, $6, $7}'").stdout.split()
    show("guest memory total/used/buff-cache/available (MiB)", "/".join(mem), results)
    rss = [int(line.split()[1]) // 1024 for pid in qemu_pids(lab.paths).values()
           for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:")]
    show("QEMU RSS (MiB)", rss, results)


if __name__ == "__main__":
    sys.exit(main())
