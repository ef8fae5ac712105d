"""Times of the rehearsal lab (a benchmark is a script, not a test): prints one line per figure.

    sudo .venv/bin/python bench/lab_times.py            # from scratch (purges the image cache)
    sudo .venv/bin/python bench/lab_times.py --no-scratch --keep

Figures: `lab up` from scratch (image build + libvirt's QEMU capability probe), warm (cache
kept), again while up (idempotent no-op), guest start → SSH banner, libvirt reboot → new boot id,
50 mails from the client namespace, `lab down`. Uses $UPGRADER_LAB_DIR or the default lab dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from upgrader.lab import Lab


def timed(label: str, fn: Callable[[], Any], results: dict[str, float]) -> Any:
    started = time.monotonic()
    value = fn()
    results[label] = round(time.monotonic() - started, 2)
    print(f"{label:<34} {results[label]:7.2f} s", flush=True)
    return value


def start_to_ssh(lab: Lab) -> None:
    with lab.libvirt_conn() as conn:
        dom = conn.lookupByName("mailhost")
        dom.destroy()
        dom.create()
    lab.wait_ssh("mailhost", timeout=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-scratch", action="store_true", help="keep the image cache (skip the cold run)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 2
    lab = Lab(os.environ.get("UPGRADER_LAB_DIR"))
    results: dict[str, float] = {}
    lab.down(purge=not args.no_scratch)
    try:
        timed("lab up (from scratch)" if not args.no_scratch else "lab up (warm)", lab.up, results)
        if not args.no_scratch:
            lab.down()
            timed("lab up (warm: image cache kept)", lab.up, results)
        timed("lab up (again, already up)", lab.up, results)
        timed("guest start -> SSH banner", lambda: start_to_ssh(lab), results)
        old = lab.boot_id("mailhost")
        timed("libvirt reboot -> new boot id", lambda: lab.wait_boot(
            "mailhost", old, timeout=120) if _reboot(lab) else None, results)
        sent = timed("50 mails (client ns, smtplib)", lambda: lab.send_mails(50), results)
        assert sent["sent"] == 50, sent
    finally:
        if not args.keep:
            timed("lab down", lab.down, results)
    if args.json:
        print(json.dumps(results))
    return 0


def _reboot(lab: Lab) -> bool:
    with lab.libvirt_conn() as conn:
        conn.lookupByName("mailhost").reboot(0)
    return True


if __name__ == "__main__":
    sys.exit(main())
