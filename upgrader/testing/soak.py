"""Random-kill soak on the fakes: whole runs driven through the real CLI (subprocesses), every
command SIGKILLed after a random delay with some probability, then driven on by what an operator
would type next (`resume`, or the command they meant: `rollback`, `abort`, `decommission`) until
the run has ended. Each trial's fake world must then be exactly where its kind of run ends
(upgrader.testing.crash.CHECKS: every non-idempotent side effect once, nothing leaked, no mail
lost). `tools/soak.py` is the command; tests/engine/test_soak.py runs a CI subset."""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from upgrader.testing.crash import CHECKS, Cli, world_of
from upgrader.testing.fakes import WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS
from upgrader.testing.world import expect_plan

WINDOW = "window: {start: 2030-01-01T01:30:00, duration: 1h}\n"
NEW_PROD_MAIL = {"match": "smtpd start", "role": "prod", "set": {"services": True}, "add_mail": 3}
MAX_COMMANDS = 60  # per trial: more means the run never settles (a bug)


@dataclass(frozen=True)
class Kind:
    """A kind of run: how the world is set up, what the operator types at a parked run, where it ends."""

    name: str
    end: str
    when_parked: str | None  # the command an operator types when the run parks ("decommission", ...)
    window: bool = False
    commands: tuple[dict[str, Any], ...] = ()
    faults: tuple[str, ...] = ()
    held: bool = False  # the failure holds the run: the operator mends the world, then `retry`


KINDS = (
    Kind("forward+decommission", "decommissioned", "decommission"),
    Kind("operator rollback", "rolled_back", "rollback"),
    Kind("verify fails: automatic rollback", "rolled_back", None, faults=("probe:prod",)),
    Kind("upgrade fails: automatic abort", "aborted", None, commands=({"match": "labos-update install", "rc": 1},)),
    Kind("operator abort at the window", "aborted", "abort", window=True),
    Kind("upgrade fails: held, fixed, retried", "decommissioned", "decommission",
         commands=({"match": "labos-update install", "rc": 1},), held=True),
)


@dataclass
class Trial:
    kind: str
    kills: int  # SIGKILLs that landed
    interrupted: int  # of those, how many left the run unfinished (the rest hit a process on its way out)
    commands: list[str]
    ok: bool
    problem: str = ""
    killed_in: Counter[str] = field(default_factory=Counter)  # command -> SIGKILLs that landed in it


@dataclass
class Result:
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return sum(t.kills for t in self.trials)

    @property
    def interrupted(self) -> int:
        return sum(t.interrupted for t in self.trials)

    @property
    def failures(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]

    def by_command(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for t in self.trials:
            total.update(t.killed_in)
        return total

    def by_kind(self) -> dict[str, tuple[int, int, int, int]]:
        """kind -> (trials, kills, kills that interrupted a run, failures)"""
        out: dict[str, Counter[str]] = {}
        for t in self.trials:
            c = out.setdefault(t.kind, Counter())
            c["trials"] += 1
            c["kills"] += t.kills
            c["interrupted"] += t.interrupted
            c["failures"] += 0 if t.ok else 1
        return {k: (c["trials"], c["kills"], c["interrupted"], c["failures"]) for k, c in out.items()}


def _setup(directory: Path, kind: Kind) -> tuple[WorldFile, Path]:
    world = new_world(production_network="prod-net")
    world["commands"] = [NEW_PROD_MAIL, *kind.commands, *RELEASE_COMMANDS]
    world["faults"] = list(kind.faults)
    wf = WorldFile(directory / "world.json")
    plan = directory / "plan.yml"
    # `on_failure: abort`, but for the held kind: the kinds with a fault end aborted
    on_failure = "" if kind.held else "on_failure: abort\n"
    plan.write_text(FAKE_PLAN.format(world=wf.path, keep="1h") + on_failure + (WINDOW if kind.window else ""))
    wf.write(expect_plan(world, plan))
    return wf, plan


def _next_command(cli: Cli, kind: Kind, plan: Path, world: WorldFile) -> list[str] | None:
    runs = cli.state / "mailhost"
    if not runs.is_dir() or not any(p.is_dir() for p in runs.iterdir()):
        return ["start", "mailhost", "--plan", str(plan)]
    record = cli.record()
    if record["finished"]:
        return None
    if record["phase"] == "held":  # the operator repairs the twin, then retries
        with world.change() as data:
            data["commands"] = [c for c in data["commands"] if c not in kind.commands]
        return ["retry", "mailhost"]
    if record["parked"] and kind.when_parked:
        return [kind.when_parked, "mailhost", "--yes"]  # scripted: the commands that ask are confirmed
    return ["resume", "mailhost"]


def _unfinished(cli: Cli) -> int:
    runs = cli.state / "mailhost"
    if not runs.is_dir() or not any(p.is_dir() for p in runs.iterdir()):
        return 1
    return 0 if cli.record()["finished"] else 1


def trial(directory: Path, kind: Kind, rng: random.Random, *, p_kill: float, max_delay: float) -> Trial:
    wf, plan = _setup(directory, kind)
    cli = Cli(directory / "state", directory / "locks")
    kills, interrupted, typed, killed_in = 0, 0, [], Counter[str]()
    for _ in range(MAX_COMMANDS):
        command = _next_command(cli, kind, plan, wf)
        if command is None:
            break
        typed.append(command[0])
        if rng.random() < p_kill:  # a quarter at a random time, the rest just after a random journal line
            if rng.random() < 0.25:
                done = cli.kill_after(rng.uniform(0.5, max_delay), *command)
            else:
                done = cli.kill_at_line(rng.randint(1, 30), rng.uniform(0, 0.03), *command)
            if done is None:
                kills += 1
                killed_in[command[0]] += 1
                interrupted += _unfinished(cli)
            if done is not None and done.rc not in (0, 1, 6):
                return Trial(kind.name, kills, interrupted, typed, False, killed_in=killed_in, problem=str(done))
        else:
            done = cli.run(*command)
            if done.rc not in (0, 1, 6):
                return Trial(kind.name, kills, interrupted, typed, False, killed_in=killed_in, problem=str(done))
    else:
        return Trial(kind.name, kills, interrupted, typed, False, killed_in=killed_in, problem=f"not finished after {MAX_COMMANDS} commands")
    record = cli.record()
    if record["phase"] != kind.end or record["cleanup_error"] or record["warnings"]:
        return Trial(kind.name, kills, interrupted, typed, False, killed_in=killed_in, problem=f"ended {record['phase']}: {record['cleanup_error']} {record['warnings']}")
    try:
        CHECKS[kind.end](world_of(wf))
    except AssertionError as exc:
        return Trial(kind.name, kills, interrupted, typed, False, killed_in=killed_in, problem=f"world: {exc}")
    return Trial(kind.name, kills, interrupted, typed, True, killed_in=killed_in)


def soak(kills: int, *, seed: int = 1, p_kill: float = 0.8, max_delay: float = 1.5,
         progress: Callable[[Trial], None] | None = None, keep: Path | None = None) -> Result:
    """Trials, kinds in turn, until at least `kills` SIGKILLs have landed."""
    rng = random.Random(seed)
    result = Result()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        base = keep or Path(tmp)
        n = 0
        while result.kills < kills:
            directory = base / f"trial{n:04d}"
            directory.mkdir(parents=True)
            t = trial(directory, KINDS[n % len(KINDS)], rng, p_kill=p_kill, max_delay=max_delay)
            result.trials.append(t)
            if progress:
                progress(t)
            n += 1
    result.seconds = time.monotonic() - started
    return result
