"""Figures of a finished lab run for docs/benchmarks.md: how long each upgrade step took, what apt
did (packages, download size) and what the package proxy served from its cache.

    python -m upgrader.lab.figures --state state/demo-debian [--host mailhost] [--proxy-log FILE]

Reads the run's journal (step begin/done times) and events.jsonl (the steps' output lines, where
apt prints "N upgraded, M newly installed" and "Need to get X of archives"), and apt-cacher-ng's
transfer log when given (time|I or O|bytes|client|path: I = bytes fetched upstream, O = bytes
served to a client; what was served but not fetched came from the cache).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_SUMMARY = re.compile(r"(\d+) upgraded, (\d+) newly installed, (\d+) to remove and (\d+) not upgraded")
_NEED = re.compile(r"Need to get ([\d.,]+ [kMG]?B)(?:/([\d.,]+ [kMG]?B))? of archives")
_FETCHED = re.compile(r"Fetched ([\d.,]+ [kMG]?B) in (\S+)")
_STEP = re.compile(r"^upgrade\[\d+\]$")


@dataclass
class StepFigures:
    key: str
    seconds: float | None = None
    upgraded: int = 0
    installed: int = 0
    removed: int = 0
    to_download: str | None = None  # what apt had to fetch (the rest was in its own cache)
    archives: str | None = None  # the size of all the archives the step installed
    fetched: str | None = None


@dataclass
class RunFigures:
    run_dir: str
    steps: list[StepFigures] = field(default_factory=list)
    proxy_served: int | None = None  # bytes the proxy gave its clients
    proxy_upstream: int | None = None  # bytes it fetched from the mirror for them

    @property
    def packages(self) -> int:
        return sum(s.upgraded + s.installed for s in self.steps)


def latest_run(state: Path, host: str) -> Path:
    runs = sorted(p for p in (state / host).iterdir() if (p / "journal.jsonl").is_file())
    if not runs:
        raise SystemExit(f"no run of {host} in {state}")
    return runs[-1]


def collect(run_dir: Path, proxy_log: Path | None = None) -> RunFigures:
    figures = RunFigures(str(run_dir))
    steps: dict[str, StepFigures] = {}
    begun: dict[str, dt.datetime] = {}
    started: float | None = None
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if started is None and "ts" in entry:
            started = dt.datetime.fromisoformat(entry["ts"]).timestamp()
        key = str(entry.get("key", ""))
        if not _STEP.match(key) or "ts" not in entry:
            continue
        step = steps.setdefault(key, StepFigures(key))
        at = dt.datetime.fromisoformat(entry["ts"])
        if entry.get("kind") == "begin":
            begun[key] = at
        elif entry.get("kind") == "done" and key in begun:
            step.seconds = round((at - begun[key]).total_seconds(), 1)
    events = run_dir / "events.jsonl"
    for line in events.read_text().splitlines() if events.is_file() else []:
        event = json.loads(line) if line.strip() else {}
        if event.get("event") != "StepOutput" or event.get("key") not in steps:
            continue
        step, text = steps[event["key"]], str(event.get("line", ""))
        if found := _SUMMARY.search(text):
            step.upgraded, step.installed, step.removed = (int(found.group(i)) for i in (1, 2, 3))
        if found := _NEED.search(text):  # "Need to get 10.5 MB/179 MB of archives": 10.5 MB to fetch of 179
            step.to_download, step.archives = found.group(1), found.group(2) or found.group(1)
        if found := _FETCHED.search(text):
            step.fetched = f"{found.group(1)} in {found.group(2)}"
    figures.steps = sorted(steps.values(), key=lambda s: int(s.key[8:-1]))
    if proxy_log is not None and proxy_log.is_file():
        served = upstream = 0
        for line in proxy_log.read_text(errors="replace").splitlines():
            fields = line.split("|")  # only what the run's twin asked for: the lab's image build is earlier
            if len(fields) >= 4 and fields[2].isdigit() and fields[0].isdigit() and int(fields[0]) >= (started or 0):
                served += int(fields[2]) if fields[1] == "O" else 0
                upstream += int(fields[2]) if fields[1] == "I" else 0
        figures.proxy_served, figures.proxy_upstream = served, upstream
    return figures


def render(figures: RunFigures) -> str:
    lines = [f"run {figures.run_dir}"]
    for s in figures.steps:
        apt = ""
        if s.upgraded or s.installed or s.removed:
            apt = f"  apt: {s.upgraded} upgraded, {s.installed} new, {s.removed} removed"
        if s.to_download:
            apt += f"; archives {s.archives}, to download {s.to_download}"
        if s.fetched:
            apt += f"; fetched {s.fetched}"
        lines.append(f"  {s.key:<12} {'' if s.seconds is None else f'{s.seconds:8.1f} s'}{apt}")
    lines.append(f"  packages upgraded or installed: {figures.packages}")
    if figures.proxy_served:
        upstream = figures.proxy_upstream or 0
        hit = 100 * (1 - min(upstream, figures.proxy_served) / figures.proxy_served)
        lines.append(f"  package proxy: served {figures.proxy_served / 1e6:.1f} MB, fetched {upstream / 1e6:.1f} MB "
                     f"from the mirror: {hit:.0f}% from its cache")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upgrader.lab.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", type=Path, required=True, help="the --state-dir of the run")
    p.add_argument("--host", default="mailhost")
    p.add_argument("--proxy-log", type=Path, help="apt-cacher-ng's apt-cacher.log")
    p.add_argument("--seconds", type=float, help="the whole scenario's wall time, to print beside")
    args = p.parse_args(argv)
    print(render(collect(latest_run(args.state, args.host), args.proxy_log)))
    if args.seconds is not None:
        print(f"  whole scenario: {args.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
