#!/usr/bin/env python3
"""Orchestrator overhead: what upgrader itself costs, with the VMs replaced by the in-package fakes.

    .venv/bin/python bench/overhead.py [--runs 20] [--hosts 50] [--stored 1000]

(a) a full run (preflight .. decommissioned) through `app.start` in-process, fakes behind the
    ports, every fsync of the state store included (a temp dir on the same disk as /tmp):
    median and p90 wall time, fsync calls and journal lines (each line is one fsynced append).
(b) reading a state dir of `--stored` runs spread over `--hosts` hosts (written with the store
    API): `app.status` / `app.history` in-process, and `upgrader status` / `upgrader list` as CLI
    subprocesses (interpreter start-up included).
(c) start-up: `upgrader --help` and `upgrader status` (a state dir of 3 hosts, a run each)
    against `python -c pass`, interleaved, median of `--startup-n` each, as ratios: what upgrader
    adds to the interpreter's own start. `--startup-only` runs just this part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labrun import machine  # noqa: E402
from upgrader import app  # noqa: E402, app_status
from upgrader.phases import Phase  # noqa: E402
from upgrader.record import PhaseTiming, RunRecord, new_run_id  # noqa: E402
from upgrader.store import RunStore  # noqa: E402
from upgrader.testing.fakes import WorldFile, new_world  # noqa: E402
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS  # noqa: E402
from upgrader.testing.world import expect_plan  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class FsyncCounter:
    def __init__(self) -> None:
        self.count = 0
        self._orig = os.fsync

    def __enter__(self) -> "FsyncCounter":
        def counting(fd: int) -> None:
            self.count += 1
            self._orig(fd)

        os.fsync = counting  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._orig  # type: ignore[assignment]


def bench_full_runs(n: int, base: Path) -> dict[str, float]:
    times, fsyncs, lines = [], [], []
    for i in range(n):
        d = base / f"run{i}"
        d.mkdir(parents=True)
        world = new_world(production_network="prod-net")
        world["commands"] = list(RELEASE_COMMANDS)
        wf = WorldFile(d / "world.json")
        plan = d / "fake.yml"
        plan.write_text(FAKE_PLAN.format(world=wf.path, keep="1h"))
        wf.write(expect_plan(world, plan))
        ctx = app.Context(RunStore(d / "state"))
        with FsyncCounter() as counter:
            t0 = time.perf_counter()
            app.start(ctx, app.StartOptions("mailhost", str(plan)))
            record = app.decommission(ctx, "mailhost")
            times.append(time.perf_counter() - t0)
        assert record.phase == Phase.DECOMMISSIONED and record.finished, record
        fsyncs.append(counter.count)
        lines.append(len((d / "state" / "mailhost" / record.run_id / "journal.jsonl").read_text().splitlines()))
    return {"median_s": statistics.median(times), "p90_s": pct(times, 0.9), "min_s": min(times),
            "fsyncs": statistics.median(fsyncs), "journal_lines": statistics.median(lines)}


def make_store(root: Path, hosts: int, runs: int) -> RunStore:
    store = RunStore(root)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    phases = [Phase.DECOMMISSIONED, Phase.ABORTED, Phase.ROLLED_BACK]
    for i in range(runs):
        host = f"host{i % hosts:03d}"
        when = start + dt.timedelta(hours=i)
        record = RunRecord(run_id=new_run_id(when), host=host, plan_path="/plans/x.yml", plan_sha256="0" * 64,
                           phase=phases[i % len(phases)], finished=True, created=when, updated=when,
                           timings=[PhaseTiming(phase=Phase.PREFLIGHT, started=when, ended=when, status="done")])
        store.create(record)
    return store


def timed(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), pct(times, 0.9)


def cli(state: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), *args],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    if proc.returncode != 0:
        raise SystemExit(f"upgrader {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")


# as installed: bytecode cached (the warm-up round writes it if PYTHONDONTWRITEBYTECODE kept it from being written)
STARTUP_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
               "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}


def startup(n: int, base: Path) -> list[tuple[str, list[str], float, float]]:
    """(label, argv, median wall seconds, median CPU seconds) of python -c pass, upgrader --help,
    upgrader status. CPU (user + system of the child) says the same as wall on a quiet machine and
    much less noisily on a busy one."""
    state = base / "startup-state"
    for i in range(3):  # three hosts, each with a run parked in `completed` (a real run on the fakes)
        world = new_world(production_network="prod-net")
        world["commands"] = list(RELEASE_COMMANDS)
        wf = WorldFile(base / f"startup-world{i}.json")
        wf.write(world)
        plan = base / f"startup{i}.yml"
        plan.write_text(FAKE_PLAN.format(world=wf.path, keep="1h"))
        app.start(app.Context(RunStore(state)), app.StartOptions(f"host{i}", str(plan)))
    commands = [("python -c pass", [sys.executable, "-c", "pass"]),
                ("upgrader --help", [sys.executable, "-m", "upgrader.cli.main", "--help"]),
                ("upgrader status", [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "status"])]
    times: dict[str, list[float]] = {label: [] for label, _ in commands}
    cpu: dict[str, list[float]] = {label: [] for label, _ in commands}
    for _ in range(n + 1):  # interleaved, so that a busy moment hits all three; the first round warms caches
        for label, argv in commands:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=STARTUP_ENV)
            times[label].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if done.returncode != 0:
                raise SystemExit(f"{label} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return [(label, argv, statistics.median(times[label][1:]), statistics.median(cpu[label][1:]))
            for label, argv in commands]


def print_startup(rows: list[tuple[str, list[str], float, float]], n: int) -> None:
    base, base_cpu = rows[0][2], rows[0][3]
    print(f"\nstart-up (median of {n}, interleaved; load average {os.getloadavg()[0]:.1f}):")
    print(f"| {'command':18} | {'wall':>9} | {'x python -c pass':>16} | {'CPU':>9} | {'x python -c pass':>16} |")
    print(f"|{'-' * 20}|{'-' * 11}|{'-' * 18}|{'-' * 11}|{'-' * 18}|")
    for label, _, wall, used in rows:
        print(f"| {label:18} | {wall * 1000:7.1f}ms | {wall / base:15.1f}x | {used * 1000:7.1f}ms | "
              f"{used / base_cpu:15.1f}x |")
    for label, argv, _, _ in rows[1:]:
        print(f"  {label}: {' '.join(Path(a).name if a == sys.executable else a for a in argv)}")


def main() -> int:
    p = argparse.ArgumentParser(description="orchestrator overhead on the fakes")
    p.add_argument("--runs", type=int, default=20, help="full fake runs (default 20)")
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--stored", type=int, default=1000, help="stored runs for the status benchmark")
    p.add_argument("--cli-repeat", type=int, default=7)
    p.add_argument("--startup-n", type=int, default=21, help="runs of each start-up command (default 21)")
    p.add_argument("--startup-only", action="store_true", help="only the start-up ratios (c)")
    args = p.parse_args()
    print(f"machine: {machine(lab=False)}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="upgrader-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        base = Path(tmp)
        started = startup(args.startup_n, base)
        if args.startup_only:
            print_startup(started, args.startup_n)
            return 0
        full = bench_full_runs(args.runs, base / "full")
        t0 = time.perf_counter()
        store = make_store(base / "state", args.hosts, args.stored)
        create_s = time.perf_counter() - t0
        ctx = app.Context(store)
        assert len(app_status.history(ctx)) == args.stored and len(app_status.status(ctx, None)) == args.hosts
        rows = [
            (f"full fake run via app.start (n={args.runs})", full["median_s"], full["p90_s"]),
            (f"app_status.status(all {args.hosts} hosts), {args.stored} runs stored", *timed(lambda: app_status.status(ctx, None), 20)),
            ("app_status.status(one host)", *timed(lambda: app_status.status(ctx, "host007"), 50)),
            (f"app.history (all {args.stored} runs)", *timed(lambda: app_status.history(ctx), 10)),
            ("`upgrader status` (CLI subprocess)", *timed(lambda: cli(store.root, "status"), args.cli_repeat)),
            ("`upgrader status host007` (CLI)", *timed(lambda: cli(store.root, "status", "host007"), args.cli_repeat)),
            ("`upgrader list` (CLI, every run)", *timed(lambda: cli(store.root, "list"), args.cli_repeat)),
            ("`upgrader --help` (CLI start-up only)", *timed(lambda: cli(store.root, "--help"), args.cli_repeat)),
        ]
    print(f"\nfull run: {full['journal_lines']:.0f} journal lines (one fsynced append each), "
          f"{full['fsyncs']:.0f} fsync calls in all (journal, run.json, directories, lock) per run")
    print(f"writing {args.stored} run records over {args.hosts} hosts with the store API: {create_s:.1f} s\n")
    print(f"| {'what':58} | {'median':>9} | {'p90':>9} |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 11}|")
    for what, med, p90 in rows:
        print(f"| {what:58} | {med * 1000:7.1f}ms | {p90 * 1000:7.1f}ms |")
    print_startup(started, args.startup_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
