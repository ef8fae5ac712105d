"""`upgrader run-due`: go on with every run whose time may have come, one host at a time, each
host isolated from the others (cron or a systemd timer calls it, see docs/scheduling.md).

    parked       resumed: a window opened, a reminder is due, keep_old_for passed; a run whose
                 time has not come parks again at once and leaves no trace (run.json, journal and
                 events.jsonl stay as they were)
    urgent       interrupted inside the cutover (prod may be down): the operators are told and the
                 run is resumed at once; the resume is crash-safe by design (it finishes the
                 cutover or rolls back), and waiting for a human is what would keep prod down
    interrupted  in await_window: resumed like a parked run. What await_window does before the
                 cutover is the run's own waiting work - notices, the fresh pre-sync passes when
                 the window opens (read-only to prod) - and a run-due killed there would otherwise
                 lose the window (listed, exit 7, every minute)
                 elsewhere: listed with the resume hint, not resumed: it stopped in the middle of
                 work a person started (an upgrade, the pre-sync phase, an abort); its last output
                 may need a look first, and nothing is down while it waits
    error        (a cleanup that failed, an urgent run whose rollback failed) listed, not retried
                 every minute: each try counts towards MAX_CLEANUP_ATTEMPTS
    held, active, finished: left alone

Anything that goes wrong with one host - locked, corrupt state, a changed plan, a bug - is that
host's result; the others go on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from upgrader import app
from upgrader.app_status import RunState, RunStatus, lock_holder, state_of
from upgrader.errors import UpgraderError
from upgrader.events import Event, Parked
from upgrader.phases import PROD_AT_STAKE, UNSUCCESSFUL, Phase
from upgrader.record import RunRecord
from upgrader.steps.operator_notice import tell_operator, urgent_event, urgent_key

if TYPE_CHECKING:
    from upgrader.engine import Engine

BugLog = Callable[[BaseException], Path]  # writes a traceback somewhere, returns where


class DueOutcome(str, Enum):
    IDLE = "idle"  # resumed, parked again: nothing was due
    RAN = "ran"  # resumed and went on (the record says how it ended)
    URGENT = "urgent"  # interrupted inside the cutover: operators told, resumed at once
    LEFT = "left"  # interrupted (or stopped on an error): listed with what to run, not resumed
    BUSY = "busy"  # another process runs it right now
    ERROR = "error"  # could not be looked at or resumed (locked, corrupt state, changed plan, a bug)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DueResult:
    host: str
    outcome: DueOutcome
    record: RunRecord | None = None
    state: RunState | None = None  # the run's state before run-due touched it
    message: str | None = None  # the error, or why the run is left alone
    hint: str | None = None
    debug_log: Path | None = None  # an unexpected error's traceback

    @property
    def skipped(self) -> str | None:
        """Why nothing was run for this host (None if it was resumed)."""
        return self.message if self.record is None or self.outcome is DueOutcome.ERROR else None

    @property
    def failed(self) -> bool:
        """A resumed run that ended badly: aborted, rolled back, failed, held, or a cleanup error."""
        r = self.record
        if r is None or self.outcome not in (DueOutcome.RAN, DueOutcome.URGENT):
            return False
        return r.phase in UNSUCCESSFUL or r.phase == Phase.HELD or r.cleanup_error is not None

    @property
    def needs_operator(self) -> bool:
        return self.outcome in (DueOutcome.ERROR, DueOutcome.LEFT)


def run_due(ctx: app.Context, *, bug_log: BugLog | None = None) -> list[DueResult]:
    """One result per host that had something to look at (held, finished and idle-free hosts
    give none). `bug_log`: where an unexpected exception's traceback goes (the CLI's debug log);
    without it, its one-line text is the result's message."""
    results = []
    for host in ctx.store.hosts():
        try:
            result = _due(ctx, host)
        except UpgraderError as exc:  # locked, corrupt state, a changed plan: that host only
            result = DueResult(host, DueOutcome.ERROR, message=exc.message, hint=exc.hint)
        except Exception as exc:  # noqa: BLE001 - a bug on one host must not keep the others from their cutover
            result = _bug(host, exc, bug_log)
        if result is not None:
            results.append(result)
    return results


def _bug(host: str, exc: Exception, bug_log: BugLog | None) -> DueResult:
    text = "".join(traceback.format_exception_only(exc)).strip()
    where = None
    if bug_log is not None:
        try:
            where = bug_log(exc)
        except (OSError, UpgraderError):
            pass
    hint = f"details in {where} — please report it with that file" if where else None
    return DueResult(host, DueOutcome.ERROR, message=f"internal error: {text}", hint=hint, debug_log=where)


def _due(ctx: app.Context, host: str) -> DueResult | None:
    record = ctx.store.active_run(host)
    if record is None:
        return None
    lock = lock_holder(ctx.store, host)
    status = state_of(record, lock, entries=ctx.store.journal(host, record.run_id) if lock is not None else None)
    state = status.state
    if state in (RunState.HELD, RunState.FINISHED):
        return None
    if state is RunState.ACTIVE:
        return DueResult(host, DueOutcome.BUSY, record, state, message=status.hint)
    if state is RunState.PARKED or (state is RunState.INTERRUPTED and record.phase == Phase.AWAIT_WINDOW):
        watch = _ParkedAgain()
        ctx.listeners.append(watch)
        try:
            done = app.resume(ctx, host)
        finally:
            ctx.listeners.remove(watch)
        return DueResult(host, DueOutcome.IDLE if watch.again else DueOutcome.RAN, done, state)
    if state is RunState.URGENT and record.cleanup_error is None:
        return DueResult(host, DueOutcome.URGENT, _resume_urgent(ctx, host, status), state,
                         message="was interrupted inside the cutover: resumed at once, operators told")
    return DueResult(host, DueOutcome.LEFT, record, state, message=status.hint)


def _resume_urgent(ctx: app.Context, host: str, status: RunStatus) -> RunRecord:
    """Tell the operators (as soon as their channels exist: prod may be down), then resume; under
    the lock. The run works from its plan copy (app.FROM_COPY): an edit of the plan file, even a
    broken one, never keeps prod down; it is ignored with a warning."""
    if status.killed and status.holder is not None:
        how = f"its process (pid {status.holder.pid}, `{status.holder.command}`) died"
    else:
        how = "its process stopped"

    def tell(engine: Engine) -> None:
        record = engine.record
        if record.phase not in PROD_AT_STAKE:  # nobody resumed it between our look and the lock
            return
        entries = ctx.store.journal(host, record.run_id)
        note = (f"{how} in {record.phase.value}, since {record.updated.isoformat(timespec='seconds')}; "
                "run-due resumes it now")
        tell_operator(engine.ctx, urgent_key(entries), urgent_event(record, note, state_dir=engine.ctx.state_dir))

    with app.holding(ctx, host) as record:
        engine = app._engine(ctx, record, going_back=record.phase in app.FROM_COPY, first=tell)
        return engine.run(resumed=True)


class _ParkedAgain:
    """Listener: did the run park again where it was, with nothing changed?"""

    def __init__(self) -> None:
        self.again = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, Parked):
            self.again = event.again
