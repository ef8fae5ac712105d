#!/usr/bin/env python3
"""Twin checkpoints on the lab (issue 11): taking one, reverting to one and merging them back,
against the data the twin wrote.

    .venv/bin/python bench/checkpoints.py   # --sizes 0 100 250 --repeat 2 --revert-writes 0 250 --merge-write 250 --disk-sizes 0 256 1024 2048 0

A pristine mailhost with the `port-broken` fault and the lab plan with `checkpoint: true` on
upgrade[4]: `upgrader start` holds at upgrade[4] with checkpoints before upgrade[0] and upgrade[4]
(their times come from the journal: guest `sync` + snapshot). Then:

* checkpoint, on the held twin: per round `--sizes` MiB of random data written into a file on its
  root filesystem (`upgrader ssh mailhost --twin -- sh -c 'dd ...; sync'`, the previous round's
  file removed first), then the adapter's `checkpoint` of the running twin timed
  (LibvirtHypervisor, the call the run makes);
* revert: `upgrader revert mailhost --to 'upgrade[4]' --yes`, first right after those rounds (all
  they wrote is above the checkpoint), then once after each `--revert-writes` MiB; the parts
  (stop, revert_checkpoint, start, SSH back) and the bytes freed from the journal (`revert[n].*`);
* merge in the run: the repair, `--merge-write` MiB written, `upgrader retry`: the run completes,
  its `checkpoints.merge` (an active block commit at the end of the pre-sync) from the journal;
* then, the twin's root being too small for more, on the same domain (now serving as prod) with a
  qcow2 data disk plugged in: per round a checkpoint (timed), `--disk-sizes` MiB written to the
  disk at a new offset, the host's page cache written back (`sync`, timed), `merge_checkpoints`
  (timed).

"Written since" is the adapter's own figure (Checkpoint.bytes: what the images above the frozen
one allocate), read just before. A write on the root filesystem is capped at its free space (a
384 MiB disk) less 16 MiB. Needs root; brings the lab up and (without --keep) down.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labrun import PLAN, allocated, lab_session, machine, upgrader  # noqa: I001

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.lab import Lab

TWIN = "mailhost-twin"
FILL = "/root/bench-fill"
FIX = "echo 'mailfilter: LIBMILTER=6' >> /etc/labos-ports.conf"
MIB = 2**20

Run = Callable[[str], str]  # a shell command on the twin -> its stdout


def plan_with_checkpoint(path: Path) -> Path:
    old = "  - name: install world and rebuild ports\n"
    text = PLAN.read_text()
    assert old in text
    path.write_text(text.replace(old, old + "    checkpoint: true\n"))
    return path


def write(run: Run, size: int) -> dict[str, Any]:
    """The previous fill removed, then `size` MiB of random data (capped to what fits) and sync."""
    df = run(f"rm -f {FILL}; sync; df -k / | tail -n 1").split()
    fits = max(0, int(df[3]) // 1024 - 16)
    n = min(size, fits)
    started = time.monotonic()
    run(f"dd if=/dev/urandom of={FILL} bs=1M count={n} 2>/dev/null; sync")
    return {"asked_mib": size, "written_mib": n, "write_s": round(time.monotonic() - started, 1)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = fn()
    return value, round(time.monotonic() - started, 3)


def chain_bytes(hv: LibvirtHypervisor) -> int:
    return sum(allocated(Path(p)) for chain in hv.disk_chains(TWIN) for p in chain)


def since(hv: LibvirtHypervisor, name: str | None = None) -> int:
    """What the twin wrote since checkpoint `name` (default: the oldest)."""
    found = hv.checkpoints(TWIN)
    return next(c.bytes for c in found if name is None or c.name == name)


def journal(state: Path) -> tuple[dict[str, tuple[dt.datetime, dt.datetime]], dict[str, Any]]:
    """Each key's last begin -> done, and its outputs."""
    begun: dict[str, dt.datetime] = {}
    spans: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    outputs: dict[str, Any] = {}
    for line in upgrader(state, "show", "mailhost", "--json").stdout.splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "begin":
            begun[entry["key"]] = dt.datetime.fromisoformat(entry["ts"])
        elif entry.get("kind") == "done" and entry["key"] in begun:
            spans[entry["key"]] = (begun[entry["key"]], dt.datetime.fromisoformat(entry["ts"]))
            outputs[entry["key"]] = entry.get("outputs") or {}
    return spans, outputs


def seconds(span: tuple[dt.datetime, dt.datetime]) -> float:
    return round((span[1] - span[0]).total_seconds(), 3)


def checkpoint_rounds(hv: LibvirtHypervisor, run: Run, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Per round: write, then the checkpoint of the running twin (it freezes what was written)."""
    rows = []
    for r in range(repeat):
        for size in sizes:
            row = write(run, size)
            row["top_bytes"] = allocated(Path(hv.disk_chains(TWIN)[0][0]))
            row["chain_bytes"] = chain_bytes(hv)
            _, row["checkpoint_s"] = timed(lambda: hv.checkpoint(TWIN, f"bench-{r}-{size}"))
            row["overlay_bytes"] = allocated(Path(hv.disk_chains(TWIN)[0][0]))
            rows.append(row)
            print(json.dumps({"round": r, "checkpoint": row}), flush=True)
    return rows


def attach_disk(lab: Lab, path: Path, size: int) -> None:
    """A qcow2 data disk `vdb` plugged into the running domain (and its definition)."""
    import libvirt

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
    xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>"
           "<target dev='vdb' bus='virtio'/></disk>")
    with lab.libvirt_conn() as conn:
        conn.lookupByName(TWIN).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    for _ in range(60):
        if lab.guest_exec("prod", "cat /sys/block/vdb/size", check=False).ok:
            return
        time.sleep(0.5)
    raise SystemExit("the guest did not see the data disk")


def disk_rounds(lab: Lab, hv: LibvirtHypervisor, sizes: list[int]) -> list[dict[str, Any]]:
    """Per round on the data disk: checkpoint (timed), `size` MiB written at a new offset, the
    host's page cache written back (timed), merge_checkpoints (timed)."""
    rows, offset = [], 0
    for n, size in enumerate(sizes):
        row: dict[str, Any] = {"written_mib": size, "chain_bytes": chain_bytes(hv)}
        _, row["checkpoint_s"] = timed(lambda: hv.checkpoint(TWIN, f"disk-{n}"))
        started = time.monotonic()
        lab.guest_exec("prod", f"dd if=/dev/urandom of=/dev/vdb bs=1M seek={offset} count={size} 2>/dev/null; sync",
                       timeout=1800)
        row["write_s"] = round(time.monotonic() - started, 1)
        offset += size
        row["since_bytes"] = since(hv)
        _, row["host_sync_s"] = timed(os.sync)
        row["freed_bytes"], row["merge_s"] = timed(lambda: hv.merge_checkpoints(TWIN))
        assert hv.checkpoints(TWIN) == [], hv.checkpoints(TWIN)
        rows.append(row)
        print(json.dumps({"disk": row}), flush=True)
    return rows


def revert(state: Path, hv: LibvirtHypervisor, n: int, written: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"written_mib": written["written_mib"] if written else None,
                           "since_bytes": since(hv, "upgrade[4]")}
    done, row["cli_s"] = timed(lambda: upgrader(state, "revert", "mailhost", "--to", "upgrade[4]", "--yes"))
    if done.returncode != 6:  # step 4 runs again on the reverted twin: still broken, held again
        raise SystemExit(f"revert {n}: exit {done.returncode}, not held again")
    spans, outputs = journal(state)
    p = f"revert[{n}]"
    for part in ("stop", "disks", "start", "ssh"):
        row[f"{part}_s"] = seconds(spans[f"{p}.{part}"])
    row["total_s"] = seconds((spans[f"{p}.stop"][0], spans[f"{p}.ssh"][1]))
    row["freed_bytes"] = outputs[f"{p}.disks"]["bytes_freed"]
    print(json.dumps({"revert": n, **row}), flush=True)
    return row


def mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[0, 100, 250], help="MiB written per round on the held twin")
    p.add_argument("--repeat", type=int, default=2, help="rounds of --sizes")
    p.add_argument("--revert-writes", nargs="*", type=int, default=[0, 250],
                   help="MiB written before each revert after the first")
    p.add_argument("--merge-write", type=int, default=250, help="MiB written before `upgrader retry`")
    p.add_argument("--disk-sizes", nargs="+", type=int, default=[0, 256, 1024, 2048, 0],
                   help="MiB written per round on the data disk, after the run")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = p.parse_args()
    started = time.monotonic()
    with lab_session(args.keep) as lab, tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        lab.pristine(["port-broken"])
        state = Path(tmp) / "state"
        plan = plan_with_checkpoint(Path(tmp) / "plan.yml")
        if upgrader(state, "start", "mailhost", "--plan", str(plan)).returncode != 6:
            raise SystemExit("the run was not held")
        hv = LibvirtHypervisor(lab.uri)

        def on_twin(command: str) -> str:
            done = upgrader(state, "ssh", "mailhost", "--twin", "--", "sh", "-c", command, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"on the twin: {command}: exit {done.returncode}")
            return done.stdout

        spans, _ = journal(state)
        run_checkpoints = {key: seconds(spans[key]) for key in ("checkpoint.upgrade[0]", "checkpoint.upgrade[4]")}
        print(json.dumps(run_checkpoints), flush=True)
        free = on_twin("df -k / | tail -n 1").split()
        print(f"twin's root: {int(free[1]) // 1024} MiB, {int(free[3]) // 1024} MiB free", flush=True)

        checkpoints = checkpoint_rounds(hv, on_twin, args.sizes, args.repeat)
        reverts = [revert(state, hv, 0, None)]
        for n, size in enumerate(args.revert_writes, start=1):
            reverts.append(revert(state, hv, n, write(on_twin, size)))

        on_twin(FIX)
        merge_written = write(on_twin, args.merge_write)
        merge_since = since(hv)
        done, retry_s = timed(lambda: upgrader(state, "retry", "mailhost"))
        if done.returncode != 0:
            raise SystemExit("the retry did not complete the run")
        spans, outputs = journal(state)
        run_merge = {"written_mib": merge_written["written_mib"], "since_bytes": merge_since,
                     "merge_s": seconds(spans["checkpoints.merge"]),
                     "freed_bytes": outputs["checkpoints.merge"]["bytes_freed"], "retry_s": retry_s}
        print(json.dumps({"run_merge": run_merge}), flush=True)
        attach_disk(lab, lab.paths.images / "bench-data.qcow2", (sum(args.disk_sizes) + 64) * MIB)
        disk = disk_rounds(lab, hv, args.disk_sizes)
        print_tables(run_checkpoints, checkpoints, reverts, run_merge, disk)
    print(f"\nwhole benchmark (lab up to lab down): {time.monotonic() - started:.0f} s")
    return 0


def print_tables(run_checkpoints: dict[str, float], checkpoints: list[dict[str, Any]], reverts: list[dict[str, Any]],
                 run_merge: dict[str, Any], disk: list[dict[str, Any]]) -> None:
    print(f"\nmachine: {machine()}; {dt.date.today()}")
    print("in the run (guest sync + snapshot): " + ", ".join(f"{k} {v:.3f} s" for k, v in run_checkpoints.items()))
    print("\ncheckpoint of the held, running twin, right after writing on its root filesystem:")
    print("| written just before | frozen top image | twin's images in all | checkpoint | new overlay |")
    print("|---|---|---|---|---|")
    for r in checkpoints:
        print(f"| {r['written_mib']} MiB ({r['write_s']} s) | {mib(r['top_bytes'])} | {mib(r['chain_bytes'])} | "
              f"**{r['checkpoint_s']:.3f} s** | {mib(r['overlay_bytes'])} |")
    print("\n| revert | written since the checkpoint | stop | revert_checkpoint | start | SSH back | "
          "stop → SSH back | freed | whole `upgrader revert` (step 4 again, held) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(reverts):
        what = "after the checkpoint rounds" if r["written_mib"] is None else f"{r['written_mib']} MiB written"
        print(f"| {n} ({what}) | {mib(r['since_bytes'])} | {r['stop_s']:.3f} s | {r['disks_s']:.3f} s | "
              f"{r['start_s']:.3f} s | {r['ssh_s']:.1f} s | **{r['total_s']:.1f} s** | {mib(r['freed_bytes'])} | "
              f"{r['cli_s']:.1f} s |")
    print(f"\nmerge in the run (`checkpoints.merge`, {run_merge['written_mib']} MiB written before the retry): "
          f"{mib(run_merge['since_bytes'])} since the oldest checkpoint, {run_merge['merge_s']:.3f} s, "
          f"{mib(run_merge['freed_bytes'])} freed (`upgrader retry` {run_merge['retry_s']:.1f} s)")
    print("\nafter the run, on the same domain with a data disk: checkpoint, write, host sync, merge:")
    print("| written | twin's images before | checkpoint | written since (adapter) | host writeback | "
          "merge_checkpoints (block commit) | freed |")
    print("|---|---|---|---|---|---|---|")
    for r in disk:
        print(f"| {r['written_mib']} MiB ({r['write_s']} s) | {mib(r['chain_bytes'])} | **{r['checkpoint_s']:.3f} s** | "
              f"{mib(r['since_bytes'])} | {r['host_sync_s']:.2f} s | **{r['merge_s']:.3f} s** | {mib(r['freed_bytes'])} |")


if __name__ == "__main__":
    sys.exit(main())
