#!/usr/bin/env python3
"""Disk space of a whole run on the lab: before the run, after completion (old VM kept), after
decommission.

    .venv/bin/python bench/space.py [--spool 1000]

A pristine mailhost with `--spool` messages, then `upgrader start` (the lab plan keeps the old VM
for 1h: the run parks in `completed`), then `upgrader decommission`. At each point: the bytes
allocated by the VM images in the lab's images directory (the image cache excluded), image by
image. Needs root; brings the lab up and (without --keep) down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from labrun import allocated, lab_session, machine, plan_file, status, upgrader  # noqa: I001

from upgrader.lab import Lab


def usage(lab: Lab) -> dict[str, int]:
    return {p.name: allocated(p) for p in sorted(lab.paths.images.glob("*.qcow2"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spool", type=int, default=1000)
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = p.parse_args()
    points: list[tuple[str, dict[str, int]]] = []
    with lab_session(args.keep) as lab:
        lab.pristine()
        lab.seed_mails(args.spool)
        points.append(("before the run", usage(lab)))
        with tempfile.TemporaryDirectory(prefix="bench-space-") as tmp:
            state = Path(tmp) / "state"
            plan = plan_file(Path(tmp) / "plan.yml")
            if upgrader(state, "start", "mailhost", "--plan", str(plan)).returncode != 0:
                raise SystemExit("the run failed")
            points.append((f"completed ({status(state)['phase']}, old VM kept)", usage(lab)))
            if upgrader(state, "decommission", "mailhost", "--yes").returncode != 0:
                raise SystemExit("decommission failed")
            freed = status(state)["outputs"]["decommission.undefine"]["bytes_freed"]
            points.append(("after decommission", usage(lab)))
    mib = 2**20
    print(f"machine: {machine()}")
    print(json.dumps({label: files for label, files in points}))
    print("| point | images (allocated) | total |")
    print("|---|---|---|")
    for label, files in points:
        detail = ", ".join(f"{name} {size / mib:.1f} MiB" for name, size in files.items())
        print(f"| {label} | {detail} | {sum(files.values()) / mib:.1f} MiB |")
    print(f"decommission reported {freed / mib:.1f} MiB freed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
