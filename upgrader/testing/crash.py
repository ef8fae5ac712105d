"""Crash harness for the crash matrix and the random-kill soak: the real CLI as a subprocess,
SIGKILLed at a named pause point (upgrader/testing/hooks.py) or after a random delay, then
recovered with more commands; the fake world then tells what happened how often.

Used by tests/engine/test_crash_*.py and tools/soak.py. Not for production code paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upgrader.testing.fakes import WorldFile


class CrashHarnessError(AssertionError):
    """The scenario did not go as the harness needed (a command ended before its kill point...)."""


@dataclass(frozen=True)
class Done:
    args: tuple[str, ...]
    rc: int
    out: str

    def __str__(self) -> str:
        return f"`upgrader {' '.join(self.args)}` exited {self.rc}:\n{self.out[-3000:]}"


@dataclass
class Cli:
    """`python -m upgrader.cli.main --state-dir STATE -q ...` with a private lock dir."""

    state: Path
    lock_dir: Path

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPGRADER_TEST_PAUSE")}
        env.update({"UPGRADER_LOCK_DIR": str(self.lock_dir), "NO_COLOR": "1"}, **(extra or {}))
        return env

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(self.state), "-q", *args],
                                env=self._env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, *args: str, timeout: float = 120) -> Done:
        proc = self.popen(*args)
        out, _ = proc.communicate(timeout=timeout)
        return Done(args, proc.returncode, out)

    def kill_at(self, point: str, *args: str, reached: Path, timeout: float = 60) -> str:
        """Run until the pause point, SIGKILL there; returns the point's full name."""
        reached.unlink(missing_ok=True)
        proc = self.popen(*args, env={"UPGRADER_TEST_PAUSE": point, "UPGRADER_TEST_PAUSE_FILE": str(reached)})
        deadline = time.monotonic() + timeout
        while not reached.exists():
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise CrashHarnessError(f"`{' '.join(args)}` ended (rc {proc.returncode}) before {point}:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise CrashHarnessError(f"{point} not reached in {timeout} s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        return reached.read_text().strip()

    def kill_after(self, seconds: float, *args: str) -> Done | None:
        """Run with a SIGKILL after `seconds`; None if it was killed, its result if it ended first."""
        proc = self.popen(*args)
        try:
            out, _ = proc.communicate(timeout=seconds)
            return Done(args, proc.returncode, out)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            return None

    def record(self, host: str = "mailhost") -> dict[str, Any]:
        """The newest run's run.json, as plain data."""
        runs = sorted(p for p in (self.state / host).iterdir() if p.is_dir())
        return json.loads((runs[-1] / "run.json").read_text())


def world_of(world: WorldFile) -> dict[str, Any]:
    return json.loads(world.path.read_text())


def op_counts(world: dict[str, Any]) -> Counter[str]:
    return Counter(e["op"] for e in world["effects"])


def guest(world: dict[str, Any], domain: str) -> dict[str, Any]:
    return world["guests"][world["domains"][domain]["guest"]]
