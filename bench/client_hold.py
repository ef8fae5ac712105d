#!/usr/bin/env python3
"""The client hold's cost on the lab's libvirtd with the real libvirt adapter (issue 14): how
long `hold_clients` (the LIVE filterref update: libvirt instantiates the nwfilter's iptables,
ip6tables and ebtables rules on the tap) and `release_clients` (the rules torn down) take, and
`define_client_hold` / `undefine_client_hold` around them.

    .venv/bin/python bench/client_hold.py [--tries 5] [--ports 25] [--keep]

Each try: hold on the running mailhost's NIC, check from the client namespace that a new
connect to port 25 times out (0.3 s) while the connection opened before still answers NOOP,
release, check a new connect succeeds at once. Prints each try and the median/min/max.
Needs root; brings the lab up and (without --keep) down.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

from labrun import lab_session, machine  # noqa: I001

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.lab import config as C
from upgrader.ports import client_hold_name


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--ports", type=int, nargs="+", default=[25])
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    name = client_hold_name("bench")
    rows: list[dict[str, Any]] = []
    with lab_session(args.keep) as lab:
        hv = LibvirtHypervisor(lab.uri)
        hv.check()  # connect outside the timings
        try:
            with lab.hold_probe() as probe:
                for _ in range(args.tries):
                    row = {"define": timed(lambda: hv.define_client_hold(name, args.ports)),
                           "hold": timed(lambda: hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, name))}
                    row["held_connect"] = probe.connect(0.3)
                    row["old_connection"] = probe.noop()[:3]
                    row["release"] = timed(lambda: hv.release_clients(C.MAILHOST, C.MAILHOST_MAC))
                    row["released_connect"] = probe.connect(0.3)
                    row["undefine"] = timed(lambda: hv.undefine_client_hold(name))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)
            hv.undefine_client_hold(name)
    print(f"\n{machine()}; {args.tries} tries, ports {args.ports}")
    print(f"{'call':10} {'median s':>9} {'min s':>7} {'max s':>7}")
    for key in ("define", "hold", "release", "undefine"):
        values = [r[key] for r in rows]
        print(f"{key:10} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")
    ok = all(r["held_connect"] == "timeout" and r["old_connection"] == "250" and r["released_connect"] == "ok"
             for r in rows)
    print("every try: held connect timed out, the old connection answered, released connect ok:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
