"""Shared by the lab benchmarks: run the real CLI against the lab's mailhost, read the run's
status, describe the machine. Not a benchmark itself."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from upgrader.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "playbooks" / "lab-mailhost.yml"
sys.path.insert(0, str(ROOT))

IP_MOVE = ("takeover:\n  strategy: ip_move\n  production_network: upgprod0\n  address: 192.0.2.10/24\n"
           "  garp_count: 3\n")
FAR_WINDOW = "window: {start: 2030-01-06T01:30:00, duration: 1h, timezone: UTC}\n"


def plan_file(path: Path, *, strategy: str = "mac_move", window: bool = False, hold: bool = True) -> Path:
    """playbooks/lab-mailhost.yml, optionally with ip_move, a window far ahead (the run parks
    after pre-sync; `resume --now --yes` cuts over when the benchmark is ready) and without the
    client hold (`takeover.hold: []`)."""
    text = PLAN.read_text()
    if strategy == "ip_move":
        old = "takeover:\n  strategy: mac_move\n  production_network: upgprod0\n"
        assert old in text
        text = text.replace(old, IP_MOVE)
    if window:
        text = text.replace("keep_old_for: 1h\n", "keep_old_for: 1h\n" + FAR_WINDOW)
    if not hold:
        assert text.count("\ntakeover:\n") == 1
        text = text.replace("\ntakeover:\n", "\ntakeover:\n  hold: []\n")
    path.write_text(text)
    return path


def upgrader(state: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"})
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
    return done


def status(state: Path) -> dict[str, Any]:
    return json.loads(upgrader(state, "status", "mailhost", "--json").stdout)["runs"][0]


@contextmanager
def lab_session(keep: bool) -> Iterator["Lab"]:
    """The lab, up for the benchmark and down after it (unless keep)."""
    from upgrader.lab import Lab

    lab = Lab()
    lab.up()
    try:
        yield lab
    finally:
        if not keep:
            lab.down()


def machine(lab: bool = True) -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({model}), {mem:.0f} GiB; "
            f"Python {platform.python_version()}" + ("; lab guests under QEMU TCG" if lab else ""))


def allocated(path: Path) -> int:
    """Bytes actually allocated (du) under path."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())
