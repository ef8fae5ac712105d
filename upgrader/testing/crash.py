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
from typing import Any, Callable

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

    def kill_at_line(self, lines: int, extra: float, *args: str, host: str = "mailhost",
                     timeout: float = 120) -> Done | None:
        """SIGKILL `extra` seconds after the host's journals grew by `lines` lines (a step boundary:
        the kill lands in whatever comes next); None if killed, the result if it ended first."""
        before = self.journal_lines(host)
        proc = self.popen(*args)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and self.journal_lines(host) < before + lines and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            time.sleep(extra)
        if proc.poll() is not None:
            out, _ = proc.communicate()
            return Done(args, proc.returncode, out)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        return None

    def journal_lines(self, host: str = "mailhost") -> int:
        total = 0
        for path in (self.state / host).glob("*/journal.jsonl"):
            try:
                total += path.read_bytes().count(b"\n")
            except OSError:
                pass
        return total

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


# ------------------------------------------------------------------------- end states (oracles)
# Each raises AssertionError if the fake world is not where a run that ended so must leave it,
# with every non-idempotent side effect counted. The scenario: upgrader/testing/scenario.py.

BASE_IMAGE = "/fake/mailhost.qcow2"


def no_sync_keys(world: dict[str, Any], domain: str) -> None:
    keys = guest(world, domain).get("authorized_sync_keys", [])
    assert keys == [], f"sync keys left authorised on {domain}: {keys}"


def no_client_hold(world: dict[str, Any]) -> None:
    """No nwfilter defined, no NIC of any domain held (fake_client_hold.py)."""
    assert world.get("nwfilters", {}) == {}, f"client-hold filters left: {world['nwfilters']}"
    assert not any(world.get("client_holds", {}).values()), f"NICs left held: {world['client_holds']}"


def check_rolled_back(world: dict[str, Any]) -> None:
    no_sync_keys(world, "mailhost")
    no_client_hold(world)
    counts = op_counts(world)
    assert list(world["domains"]) == ["mailhost"]
    old = world["domains"]["mailhost"]
    assert all(old["links"].values()) and old["disks"] == {"vda": BASE_IMAGE} and old["claim"] is None
    assert list(world["images"]) == [BASE_IMAGE]
    assert {op: counts[op] for op in ("snapshot", "clone", "set_link", "move_nic", "undefine", "merge_back", "set_claim",
                                      "release_claim", "hold_clients", "release_clients")} == {
        "snapshot": 1, "clone": 1, "set_link": 2, "move_nic": 2, "undefine": 1, "merge_back": 1, "set_claim": 1,
        "release_claim": 1, "hold_clients": 1, "release_clients": 1}
    twin_mail = set(world["guests"]["g1"]["mail"])  # the twin's guest outlives its domain in the fake
    old_mail = guest(world, "mailhost")["mail"]
    assert twin_mail <= set(old_mail), sorted(twin_mail - set(old_mail))  # nothing the new prod accepted is lost
    assert guest(world, "mailhost")["services"]


def check_aborted(world: dict[str, Any]) -> None:
    no_sync_keys(world, "mailhost")
    no_client_hold(world)
    counts = op_counts(world)
    assert list(world["domains"]) == ["mailhost"] and list(world["images"]) == [BASE_IMAGE]
    assert world["domains"]["mailhost"]["claim"] is None
    assert {op: counts[op] for op in ("snapshot", "clone", "set_link", "undefine", "merge_back", "release_claim",
                                      "define_client_hold")} == {
        "snapshot": 1, "clone": 1, "set_link": 0, "undefine": 1, "merge_back": 1, "release_claim": 1, "define_client_hold": 0}
    assert guest(world, "mailhost")["release"] == "1"


def check_decommissioned(world: dict[str, Any]) -> None:
    no_sync_keys(world, "mailhost-twin")
    no_client_hold(world)
    counts = op_counts(world)
    assert {op: counts[op] for op in ("snapshot", "clone", "start", "reboot", "set_link", "move_nic", "set_claim",
                                      "hold_clients", "release_clients")} == {
        "snapshot": 1, "clone": 1, "start": 1, "reboot": 2, "set_link": 1, "move_nic": 1, "set_claim": 1,
        "hold_clients": 1, "release_clients": 1}
    g = guest(world, "mailhost-twin")
    assert g["release"] == "2" and g["services"] and len(set(g["mail"])) == len(g["mail"])
    assert all(img["backing"] is None for img in world["images"].values())
    assert list(world["domains"]) == ["mailhost-twin"]
    twin = world["domains"]["mailhost-twin"]
    assert set(world["images"]) == set(twin["disks"].values()) and twin["claim"] is None
    assert {op: counts[op] for op in ("flatten", "destroy", "undefine", "release_claim", "set_autostart")} == {
        "flatten": 1, "destroy": 1, "undefine": 1, "release_claim": 1, "set_autostart": 1}
    assert twin.get("autostart") is True  # the old VM's (the fake world's prod has autostart on)


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "rolled_back": check_rolled_back, "aborted": check_aborted, "decommissioned": check_decommissioned}
