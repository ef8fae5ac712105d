"""What every step gets (an explicit context) and the one idempotency primitive, `once`.

`ctx.once(key, title, run, probe, before, skip_if=...)`:
  * `done` for key in the journal      -> return its recorded outputs, run nothing;
  * `begin` without `done` (in doubt)  -> ask `probe(begin_entry)`: outputs if the effect is
                                          already in place (journal `done`, run nothing), None if not;
  * never begun, `skip_if` given       -> ask `skip_if()` first: an `AlreadyDone` if the effect is in
                                          place before the step ever ran (journal `done` without a
                                          `begin`, run nothing), None to run it (e.g. a plan `probe:`);
  * otherwise                          -> journal `begin` (+ `before()` data), run, journal `done`.
Nothing is done twice as long as every side effect sits in a `once` with an honest probe.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from upgrader.errors import ConnectionLost
from upgrader.events import Event, Notice, StepBegin, StepDone, StepInDoubt, StepOutput
from upgrader.phases import Phase
from upgrader.ports import Hypervisor, PlaybookRunner, Prober, ShellFactory, Syncer
from upgrader.record import RunRecord, utcnow

if TYPE_CHECKING:
    from upgrader.notify import Notifier
    from upgrader.notify.operator import OperatorChannels
    from upgrader.plan import Plan

Outputs = dict[str, Any]
RECONNECT_ATTEMPTS = 3  # per step: a connection lost twice is survived, a third time is the failure


@dataclass
class Ports:
    hypervisor: Hypervisor
    shells: ShellFactory
    syncer: Syncer
    prober: Prober
    notifier: "Notifier | None" = None  # customers: only when the plan announces
    operator: "OperatorChannels | None" = None  # operators: only when the plan has an operator block
    playbooks: PlaybookRunner | None = None  # ansible: upgrade steps (the real adapter needs ansible-core)


class JournalIO(Protocol):
    def append(self, entry: dict[str, Any]) -> None: ...


class ReadOnlyJournal:
    """For reading a journal's index without the run's lock (status, checkpoints)."""

    def append(self, entry: dict[str, Any]) -> None:
        raise AssertionError("a read-only journal was written to")


@dataclass
class Journal:
    """The run's journal as an index: key -> begin entry / done outputs."""

    io: JournalIO
    begun: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[str, Outputs] = field(default_factory=dict)
    rewound: set[str] = field(default_factory=set)  # forgotten by a `rewind` (a revert) and not begun since
    rewinds: int = 0  # reverts finished so far (each journals one `rewind`)
    unapplied_rewind: str | None = None  # a revert's target whose rewind no transition followed yet
    reverts_given_up: int = 0  # interrupted reverts replaced by one to another step
    given_up_for: str | None = None  # the target of the revert that replaced one, until its rewind
    pending_hold: dict[str, Any] | None = None  # a `held` entry no transition followed yet (killed in between)
    failures: int = 0  # `failed` entries: numbers the operators' held notices

    @classmethod
    def from_entries(cls, io: JournalIO, entries: list[dict[str, Any]]) -> "Journal":
        journal = cls(io)
        for entry in entries:
            journal._index(entry)
        return journal

    def _index(self, entry: dict[str, Any]) -> None:
        kind, key = entry.get("kind"), entry.get("key")
        if kind == "begin" and isinstance(key, str):
            self.begun[key] = entry
            self.rewound.discard(key)
        elif kind == "done" and isinstance(key, str):
            self.done[key] = dict(entry.get("outputs") or {})
        elif kind == "transition":
            self.unapplied_rewind = None
            self.pending_hold = None
        elif kind == "held":
            self.pending_hold = entry
        elif kind == "failed":
            self.failures += 1
        elif kind == "rewind":  # a revert: these steps are to run again, as if never begun
            self.rewinds += 1
            self.unapplied_rewind = str(entry.get("to"))
            self.given_up_for = None
            for forgotten in entry.get("keys") or []:
                self.begun.pop(forgotten, None)
                self.done.pop(forgotten, None)
                self.rewound.add(forgotten)
        elif kind == "revert_given_up":
            self.reverts_given_up += 1
            self.given_up_for = str(entry.get("for"))

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"kind": kind, "ts": utcnow().isoformat(), **fields}
        self.io.append(entry)
        self._index(entry)
        return entry


@dataclass(frozen=True)
class AlreadyDone:
    """What a `once` step's `skip_if` found: the effect is in place before the step ever ran."""

    outputs: Outputs  # journaled as the step's `done`
    reason: str  # shown as "skipped (REASON)"


@dataclass(frozen=True)
class Outcome:
    """What a phase's step tells the engine besides its outputs."""

    outputs: Outputs = field(default_factory=dict)
    park: str | None = None  # reason: stop here, exit 0, resume later
    trigger: str = "advance"


@dataclass
class StepContext:
    plan: "Plan"
    record: RunRecord
    ports: Ports
    journal: Journal
    emit: Callable[[Event], None]
    now: Callable[[], dt.datetime] = utcnow
    force_decommission: bool = False
    interrupt: Callable[[], None] | None = None  # raises to stop before the next side effect
    state_dir: str = ""  # where this controller keeps the run (named in the VM's claim)
    # keys begun and not yet done, innermost last: on a failure, the step that failed
    active: list[tuple[str, str]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def run_dir(self) -> Path:
        """The run's own directory (RunStore.run_dir: state dir / host / run id), for files a step
        keeps on the controller (an `ansible:` step's inventory, Ansible's state, its logs)."""
        if not self.state_dir:
            raise AssertionError("a step asked for the run's directory of a context without a state dir")
        return Path(self.state_dir) / self.record.host / self.run_id

    def output_sink(self, key: str) -> Callable[[str], None]:
        def sink(line: str) -> None:
            self.emit(StepOutput(key, line.rstrip("\n")))

        return sink

    def once(
        self,
        key: str,
        title: str,
        run: Callable[[dict[str, Any]], Outputs],
        probe: Callable[[dict[str, Any]], Outputs | None] | None = None,
        before: Callable[[], dict[str, Any]] | None = None,
        *,
        skip_if: Callable[[], AlreadyDone | None] | None = None,
    ) -> Outputs:
        """Run `run(begin_entry)` at most once per run (see module doc). `before()` adds data to
        the `begin` entry (e.g. the boot id before a reboot) that `probe` can compare with;
        `skip_if()` is asked only for a step never begun (a step in doubt has `probe`)."""
        if key in self.journal.done:
            outputs = self.journal.done[key]
            self.emit(StepDone(key, outputs, skipped=True))
            return outputs
        begin = self.journal.begun.get(key)
        if begin is not None:
            found = probe(begin) if probe is not None else None
            self.emit(StepInDoubt(key, already_done=found is not None))
            if found is not None:
                return self._done(key, found, skipped=True)
        if self.interrupt is not None:
            self.interrupt()
        self.active[:] = [a for a in self.active if a[0] != key]  # an earlier attempt that raised
        if begin is None and skip_if is not None:
            self.active.append((key, title))  # a failure while asking is this step's failure
            already = skip_if()
            self.active.remove((key, title))
            if already is not None:
                return self._done(key, already.outputs, skipped=True, reason=already.reason)
        extra = before() if before is not None else {}
        begin = self.journal.write("begin", key=key, title=title, **extra)
        self.emit(StepBegin(key, title))
        self.active.append((key, title))
        outputs = run(begin)
        self.active.remove((key, title))
        return self._done(key, outputs)

    def once_reconnecting(
        self,
        key: str,
        title: str,
        run: Callable[[dict[str, Any]], Outputs],
        probe: Callable[[dict[str, Any]], Outputs | None] | None = None,
        before: Callable[[], dict[str, Any]] | None = None,
        *,
        skip_if: Callable[[], AlreadyDone | None] | None = None,
        attempts: int = RECONNECT_ATTEMPTS,
    ) -> Outputs:
        """`once` for a step on a guest whose SSH connection may drop (a long upgrade, a sync):
        a lost connection is handled like a crash at that moment - reconnect, probe, redo only if
        the probe says it did not happen - up to `attempts` times, then the loss is the failure."""
        for attempt in range(1, attempts + 1):
            try:
                return self.once(key, title, run, probe, before, skip_if=skip_if)
            except ConnectionLost as exc:
                self.journal.write("connection_lost", key=key, attempt=attempt, error=exc.message)
                if attempt == attempts:
                    raise
                self.emit(Notice(f"{key}: {exc.message}; reconnecting and probing before redoing it "
                                 f"(attempt {attempt + 1} of {attempts})", "warning"))
        raise AssertionError("unreachable")

    def _done(self, key: str, outputs: Outputs, skipped: bool = False, reason: str | None = None) -> Outputs:
        self.journal.write("done", key=key, outputs=outputs)
        self.record.outputs[key] = outputs
        self.emit(StepDone(key, outputs, skipped=skipped, reason=reason))
        return outputs


class Step(Protocol):
    phase: Phase

    def describe(self, plan: "Plan") -> list[str]:
        """What this phase will do, for --dry-run; touches nothing."""

    def run(self, ctx: StepContext) -> Outcome: ...
