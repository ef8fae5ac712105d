"""The engine: for the current phase run its step, journal, checkpoint, advance. It emits
events and never prints.

Failure policy (docs/architecture.md):
  * clone, upgrade, validate_staging or presync fails
                                         -> held (plan `on_failure: hold`, the default): the twin
                                            is kept; `retry`/`skip`/`revert` go back in, `abort` ends
  * any other step fails before cutover  -> abort (the aborted phase's step cleans staging up)
  * a step fails in cutover or verify    -> rollback (network back, reverse sync, old VM serves)
  * a cleanup step fails (aborted, rolling_back, completed/decommission)
                                         -> the phase stays, the error is recorded, exit 1;
                                            `resume` retries; after MAX_CLEANUP_ATTEMPTS a
                                            rollback/abort ends in `failed` for a human to look.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from upgrader.errors import IllegalAction, StateCorrupt, StepFailed, UpgraderError
from upgrader.events import (
    Event,
    Held,
    Listener,
    Notice,
    OperatorAction,
    Parked,
    PhaseDone,
    PhaseFailed,
    PhaseStarted,
    RunEnded,
    RunStarted,
    Transition,
)
from upgrader.machine import RunMachine
from upgrader.phases import BEFORE_CUTOVER, HOLDABLE, TERMINAL, UNSUCCESSFUL, Phase, retry_trigger
from upgrader.record import HeldStep, PhaseTiming, RunError, RunRecord, held_from_journal, utcnow
from upgrader.steps import STEPS
from upgrader.steps.base import Journal, Ports, StepContext
from upgrader.step_keys import revert_targets
from upgrader.steps.operator_notice import FAILED_KEY, held_event, held_key, operator_event_for_failure, tell_operator
from upgrader.steps.sync import sweep_sync_keys, sync_in_doubt
from upgrader.store import touch_private

if TYPE_CHECKING:
    from upgrader.notify.operator import OperatorEvent
    from upgrader.plan import Plan
    from upgrader.store import RunStore

MAX_CLEANUP_ATTEMPTS = 3
CLEANUP = frozenset({Phase.ABORTED, Phase.ROLLING_BACK, Phase.COMPLETED})
ABORT_REQUEST_FILE = "abort-requested"


class AbortRequested(StepFailed):
    """The operator asked (`upgrader abort HOST`) while this process held the run."""


class _StoreJournal:
    def __init__(self, store: "RunStore", record: RunRecord) -> None:
        self.store, self.host, self.run_id = store, record.host, record.run_id

    def append(self, entry: dict[str, object]) -> None:
        self.store.append(self.host, self.run_id, entry)


class Engine:
    def __init__(
        self,
        store: "RunStore",
        record: RunRecord,
        plan: "Plan",
        ports: Ports,
        listeners: list[Listener],
        *,
        now: Callable[[], dt.datetime] = utcnow,
        force_decommission: bool = False,
    ) -> None:
        self.store, self.record, self.plan, self.ports = store, record, plan, ports
        self.listeners = listeners
        self.now = now
        self.journal = Journal.from_entries(_StoreJournal(store, record), store.journal(record.host, record.run_id))
        # run.json is a summary; the journal is the truth about steps.
        record.outputs.update(self.journal.done)
        for key in self.journal.rewound:  # a revert killed before run.json was saved
            record.outputs.pop(key, None)
        self.ctx = StepContext(
            plan=plan,
            record=record,
            ports=ports,
            journal=self.journal,
            emit=self.emit,
            now=now,
            force_decommission=force_decommission,
            interrupt=self._check_abort,
            state_dir=str(store.root.resolve()),
        )
        self.machine = RunMachine(record.phase, on_change=self._on_change)
        self._trigger = ""
        if record.phase != Phase.HELD:
            record.held = None  # a retry killed between the journal and run.json
        elif record.held is None:  # a hold killed between the journal and run.json
            record.held = held_from_journal(store.journal(record.host, record.run_id))

    # ------------------------------------------------------------------------------ events

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    # ------------------------------------------------------------------------ transitions

    def fire(self, trigger: str) -> None:
        self._trigger = trigger
        self.machine.fire(trigger)

    def _on_change(self, source: Phase, dest: Phase) -> None:
        """transitions' after_state_change: checkpoint, then tell the world."""
        now = self.now()
        for timing in self.record.timings:
            if timing.phase == source and timing.ended is None:
                timing.ended = now
            if timing.phase == source and timing.status == "running":
                timing.status = "done"
        self.record.phase = dest
        self.record.parked = None
        if source == Phase.HELD:
            self.record.held = None
        if dest in TERMINAL and STEPS.get(dest) is None:
            self.record.finished = True
        self.journal.write("transition", source=source.value, dest=dest.value, trigger=self._trigger)
        self.store.save(self.record)
        self.emit(Transition(source, dest, self._trigger))

    # ------------------------------------------------------------------------------- run

    def abort_requested(self) -> bool:
        return (self.store.run_dir(self.record.host, self.record.run_id) / ABORT_REQUEST_FILE).exists()

    def _check_abort(self) -> None:
        """Called before every step's side effect: an abort request stops a long upgrade early.
        One that arrives once the cutover began is refused out loud, never silently dropped."""
        if not self.abort_requested():
            return
        if self.machine.state in BEFORE_CUTOVER:
            raise AbortRequested("aborted by the operator (`upgrader abort`)")
        self._refuse_abort()

    def _drop_abort_request(self) -> None:
        (self.store.run_dir(self.record.host, self.record.run_id) / ABORT_REQUEST_FILE).unlink(missing_ok=True)

    def _refuse_abort(self) -> None:
        phase = self.machine.state
        if phase in (Phase.ABORTED, Phase.ROLLING_BACK):  # already going back: the request is moot
            self.journal.write("abort_request_dropped", phase=phase.value)
            self._drop_abort_request()
            return
        self.journal.write("abort_refused", phase=phase.value)
        self._drop_abort_request()
        self.emit(Notice(f"abort request refused: the run is in {phase.value}, the cutover has begun; "
                         f"`upgrader rollback {self.record.host}` goes back once it is done", "error"))

    def run(self, *, resumed: bool) -> RunRecord:
        record = self.record
        self.emit(RunStarted(record.host, record.run_id, record.phase, resumed))
        if resumed and not record.finished and sync_in_doubt(self.ctx):
            sweep_sync_keys(self.ctx)  # a killed sync's key goes now, not only when that sync is redone
        if resumed and not record.finished:
            self._close_interrupted_timings()
            self.complete_pending_hold()
        stopped_on_error = False
        while not record.finished:
            phase = self.machine.state
            step = STEPS.get(phase)
            if phase == Phase.HELD and not self.abort_requested():  # until the operator retries, skips, reverts or aborts
                break
            if step is None and phase != Phase.HELD:  # a terminal phase without a step of its own
                record.finished = True
                self.store.save(record)
                break
            if self.abort_requested():
                if phase in BEFORE_CUTOVER:
                    self._fail(phase, AbortRequested("aborted by the operator (`upgrader abort`)"))
                    continue
                self._refuse_abort()
            timing = PhaseTiming(phase=phase, started=self.now())
            # resumed where it parked (run-due from cron): appended and saved only if it does more
            # than park again, so a call that does nothing leaves run.json as it was
            parked_here = self._parked_in(phase)
            unchanged = record.model_dump_json() if parked_here else None
            if not parked_here:
                record.timings.append(timing)
                self.store.save(record)
            self.emit(PhaseStarted(phase))
            self.ctx.active.clear()
            started = time.monotonic()
            try:
                outcome = step.run(self.ctx)
            except StateCorrupt:  # our own state cannot be written: stop, never abort or roll back for it
                raise
            except UpgraderError as exc:
                timing.ended, timing.status = self.now(), "failed"
                if parked_here:
                    record.timings.append(timing)
                self._fail(phase, exc)
                if record.phase == phase:  # cleanup phase failed: stop here, resume retries
                    stopped_on_error = True
                    break
                continue
            if outcome.park:
                timing.ended, timing.status = self.now(), "parked"
                record.parked = outcome.park
                again = parked_here and record.model_dump_json() == unchanged
                if not again:  # parked anew (or parked again with news: a new reason, a notice sent)
                    self.store.save(record)
                self.emit(Parked(phase, outcome.park, again=again))
                break
            if parked_here:
                record.timings.append(timing)
            record.cleanup_error = None
            self.emit(PhaseDone(phase, time.monotonic() - started))
            if outcome.trigger:
                self.fire(outcome.trigger)
            else:  # the terminal phase's own step (abort cleanup) is done
                timing.ended, timing.status = self.now(), "done"
                record.finished = True
                self.store.save(record)
        ok = not stopped_on_error and record.phase not in UNSUCCESSFUL and record.phase != Phase.HELD
        self.emit(RunEnded(record.phase, record.finished, ok))
        return record

    def _parked_in(self, phase: Phase) -> bool:
        last = self.record.timings[-1] if self.record.timings else None
        return self.record.parked is not None and last is not None and last.phase == phase and last.status == "parked"

    def _close_interrupted_timings(self) -> None:
        """A phase the last process was killed in: `interrupted`, ended at its last journal line
        (when it was last seen alive), not `done` with the dead time counted when it is resumed."""
        stale = [t for t in self.record.timings if t.status == "running"]
        if not stale:
            return
        entries = self.store.journal(self.record.host, self.record.run_id)
        run_lines = [e for e in entries if e.get("ts") and not str(e.get("kind", "")).startswith("ssh")]  # ssh: beside the run
        last_seen = max((dt.datetime.fromisoformat(str(e["ts"])) for e in run_lines), default=None)
        for timing in stale:
            timing.status = "interrupted"
            timing.ended = max(timing.started, last_seen) if last_seen is not None else timing.started
        self.store.save(self.record)

    def _fail(self, phase: Phase, exc: UpgraderError) -> None:
        record = self.record
        error = RunError(phase=phase, message=exc.message, hint=exc.hint, kind=type(exc).__name__)
        if phase in CLEANUP:
            record.cleanup_error = error
        else:
            record.error = error
        self.journal.write("failed", phase=phase.value, error=exc.message, error_kind=type(exc).__name__)
        self.emit(PhaseFailed(phase, exc.message, exc.hint))
        if phase in HOLDABLE and not isinstance(exc, AbortRequested) and self.plan.failure_policy(self._failed_step()) == "hold":
            self._hold(phase, exc)
        elif phase in BEFORE_CUTOVER:
            self.emit(Notice("aborting: prod was not touched; staging is being removed", "warning"))
            self.fire("abort")
            if isinstance(exc, AbortRequested):  # recorded by the transition: the request is spent
                self._drop_abort_request()
        elif phase in (Phase.CUTOVER, Phase.VERIFY):
            self.emit(Notice("rolling back: network back to the old VM, reverse sync, services restarted", "warning"))
            self.fire("rollback")
        else:
            failures = sum(1 for e in self.store.journal(record.host, record.run_id) if e.get("kind") == "failed" and e.get("phase") == phase.value)
            if phase in (Phase.ABORTED, Phase.ROLLING_BACK) and failures >= MAX_CLEANUP_ATTEMPTS:
                # before the transition: `failed` is terminal, a crash after it would lose the notice
                self._tell_operator(FAILED_KEY, operator_event_for_failure(record, self.plan, state_dir=self.ctx.state_dir))
                self.fire("fail")
            else:
                self.store.save(record)

    # ------------------------------------------------------------------------------ held

    def _failed_step(self) -> str | None:
        for key, _ in reversed(self.ctx.active):  # innermost first; a step that raised and was redone is done
            if key not in self.journal.done:
                return key
        open_keys = [k for k in self.journal.begun if k not in self.journal.done]
        return open_keys[-1] if open_keys else None

    def _hold(self, phase: Phase, exc: UpgraderError) -> None:
        """Park in `held`: the twin stays on staging, the failure and its Result are recorded."""
        step = self._failed_step()
        title = dict(self.ctx.active).get(step) if step else None
        if title is None and step is not None:
            title = self.journal.begun.get(step, {}).get("title")
        result = exc.result if isinstance(exc, StepFailed) else None
        held = HeldStep(
            phase=phase, step=step, title=title, message=exc.message, hint=exc.hint, error_kind=type(exc).__name__,
            command=result.command if result else None, rc=result.rc if result else None,
            tail=result.tail(20) if result else None, since=self.now(),
        )
        self.journal.write("held", **held.model_dump(mode="json"))  # before the transition: survives a crash
        self.record.held = held
        self.emit(Held(self.record.host, phase, step, exc.message, exc.hint))
        self._tell_held(held)
        self.fire("hold")

    def _tell_operator(self, key: str, event: "OperatorEvent") -> None:
        """Operator notices from the engine's own decisions: never stopped by an abort request
        (that is honoured at the next step), never raising (a failed delivery is journaled)."""
        interrupt, self.ctx.interrupt = self.ctx.interrupt, None
        try:
            tell_operator(self.ctx, key, event)
        finally:
            self.ctx.interrupt = interrupt

    def complete_pending_hold(self) -> None:
        """A process killed after journaling `held` (and telling the operators) but before the
        transition: the run is held, not to be run on (its failed step would run again unfixed)."""
        entry = self.journal.pending_hold
        if entry is None or self.machine.state not in HOLDABLE:
            return
        held = HeldStep.from_entry(entry)
        self.record.held = held
        self.emit(Held(self.record.host, held.phase, held.step, held.message, held.hint))
        self._tell_held(held)
        self.fire("hold")

    def _tell_held(self, held: HeldStep) -> None:
        self._tell_operator(held_key(self.journal.failures), held_event(self.record, self.plan, held.step, held.message, held.tail,
                                                          checkpoints=revert_targets(self.journal.done),
                                                          state_dir=self.ctx.state_dir))

    def abort_held(self, exc: "AbortRequested") -> None:
        """`upgrader abort` asked while a retry/skip/revert was at work on the held twin."""
        self._fail(self.machine.state, exc)

    def require_held(self) -> HeldStep:
        self.complete_pending_hold()
        held = self.record.held
        if self.machine.state != Phase.HELD or held is None:
            raise IllegalAction(f"the run is not held (phase {self.machine.state.value})",
                                hint=f"`upgrader status {self.record.host}` shows where it is")
        return held

    def leave_hold(self, action: str, *, into: Phase | None = None, **fields: object) -> HeldStep:
        """`retry`/`skip`/`revert`/`resume` of a held run: journal who and why, back into the
        phase it was held in (`into`: the upgrade, for a revert)."""
        held = self.require_held()
        if self.journal.unapplied_rewind is not None:  # reverted, killed before the transition
            into = Phase.UPGRADE
        self.journal.write("operator", action=action, step=held.step, **fields)
        self.emit(OperatorAction(action, held.step))
        self.record.error = None
        for key in self.journal.rewound:
            self.record.outputs.pop(key, None)
        self.fire(retry_trigger(into or held.phase))
        return held


def request_abort(run_dir: Path) -> None:
    """Ask the process that holds the run to abort at its next step boundary."""
    touch_private(run_dir / ABORT_REQUEST_FILE)
