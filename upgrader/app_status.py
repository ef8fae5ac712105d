"""`status`, `list`: what state each run is in, as an operator needs to know it.

The state is more than the phase: a run in `upgrade` may be running right now, or its process may
have been killed an hour ago. The host lock tells: its holder writes its pid into the lock file
and clears it on exit, so a record left behind names a process that died (upgrader/store/lock.py).

    active       a live process holds the host lock and is running the run
    parked       waiting for its window, an approval, or keep_old_for; `run-due` goes on with it
    held         a step before the cutover failed; the twin is kept for repair
    interrupted  nobody runs it (the process was killed, or Ctrl-C): `upgrader resume HOST`
    urgent       interrupted inside the cutover (cutover, verify, rolling_back): prod may be down;
                 `run-due` resumes it at once and tells the operators
    error        a cleanup step (abort, decommission) failed; `resume` retries it, `run-due`
                 leaves it to an operator (shown before `parked`: a failed decommission is still
                 parked in `completed`)
    finished     nothing more to do (decommissioned, aborted, rolled back, failed)

The JSON of these (`status --json`, `list --json`) is versioned: docs/json-schema.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from upgrader.errors import UnknownHost
from upgrader.phases import PROD_AT_STAKE, Phase
from upgrader.store import LOCK_FILE, RunStore
from upgrader.store.lock import LockHolder, holder
from upgrader.store.summary import latest_summaries

if TYPE_CHECKING:
    from upgrader.app import Context
    from upgrader.record import RunRecord


class CleanupLike(Protocol):
    @property
    def phase(self) -> Phase: ...
    @property
    def message(self) -> str: ...
    @property
    def hint(self) -> str | None: ...


class RunLike(Protocol):
    """What a state is told from: a RunRecord, or the status table's light store.summary.RunSummary."""

    @property
    def host(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def finished(self) -> bool: ...
    @property
    def parked(self) -> str | None: ...
    @property
    def cleanup_error(self) -> CleanupLike | None: ...
    @property
    def updated(self) -> dt.datetime: ...
    @property
    def outputs(self) -> Any: ...


class RunState(str, Enum):
    ACTIVE = "active"
    PARKED = "parked"
    HELD = "held"
    INTERRUPTED = "interrupted"
    URGENT = "urgent"
    ERROR = "error"
    FINISHED = "finished"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RunStatus:
    """A run, the state it is in, who holds (or held, if it died) its host lock, what to do next."""

    record: Any  # RunRecord (status HOST, --json, list) or RunLike (the status table)
    state: RunState
    holder: LockHolder | None = None
    hint: str | None = None
    client_hold: str | None = None  # "mailhost:25, 143": a client hold began and no release finished

    @property
    def killed(self) -> bool:
        """Its process died holding the lock (not a clean stop such as Ctrl-C)."""
        return self.holder is not None and self.holder.alive is False


def lock_holder(store: RunStore, host: str) -> LockHolder | None:
    return holder(store.host_dir(host) / LOCK_FILE)


def open_step(entries: list[dict[str, Any]]) -> str | None:
    """The last step the journal says was begun and never done (a process died in it)."""
    done = {e.get("key") for e in entries if e.get("kind") == "done"}
    begun = [str(e.get("key")) for e in entries if e.get("kind") == "begin" and e.get("key") not in done]
    return begun[-1] if begun else None


def state_of(record: RunLike, lock: LockHolder | None, *, latest: bool = True,
             entries: list[dict[str, Any]] | None = None) -> RunStatus:
    """`lock`: the host lock's recorded holder (None: nobody holds it). Only the latest run of a
    host can be the one the holder runs (`latest`). `entries`: its journal, to tell a parked run
    whose resume was killed in the middle of a step (a decommission, a notice) from one killed
    while it only looked at the clock."""
    host = record.host
    alive = lock.alive if (lock is not None and latest) else False
    if record.finished:
        return RunStatus(record, RunState.FINISHED)
    if alive is not False:  # running; or run from another machine sharing the state dir: cannot tell, taken as running
        assert lock is not None
        return RunStatus(record, RunState.ACTIVE, lock,
                         f"pid {lock.pid} on {lock.hostname} runs it since {lock.since}: {lock.command}")
    dead = lock if latest else None
    if record.phase == Phase.HELD:
        return RunStatus(record, RunState.HELD, dead, f"`upgrader status {host}` says what to run next")
    if record.cleanup_error is not None and record.phase not in PROD_AT_STAKE:  # before `parked`: a failed
        return RunStatus(record, RunState.ERROR, dead, _error_hint(record))  # decommission stays parked in `completed`
    how = "its process was killed" if dead is not None else "its process stopped"
    step = open_step(entries) if (record.parked and dead is not None and entries is not None) else None
    if record.parked and step is None:
        return RunStatus(record, RunState.PARKED, dead, record.parked)
    if step is not None:  # resumed from its park, killed in the middle of `step`: run.json still says parked
        how = f"{how} in the middle of {step}"
    if record.phase in PROD_AT_STAKE:
        if record.cleanup_error is not None:
            why = f"the rollback failed ({record.cleanup_error.message}) and stopped"
            return RunStatus(record, RunState.URGENT, dead,
                             f"{why}: prod may be down; look (`upgrader show {host}`), then `upgrader resume {host}`")
        return RunStatus(record, RunState.URGENT, dead,
                         f"{how} in {record.phase.value}: prod may be down; `upgrader resume {host}` brings it back "
                         "(`upgrader run-due` does it by itself)")
    return RunStatus(record, RunState.INTERRUPTED, dead,
                     f"{how} in {record.phase.value}; `upgrader resume {host}` continues from the last checkpoint")


_CLEANUP_NAMES = {Phase.COMPLETED: "decommission", Phase.DECOMMISSIONED: "decommission", Phase.ABORTED: "abort cleanup",
                  Phase.ROLLED_BACK: "rollback cleanup"}


def _error_hint(record: RunLike) -> str:
    """What failed and what retries it (`run-due` does not: an operator looks first)."""
    error = record.cleanup_error
    assert error is not None
    what = _CLEANUP_NAMES.get(error.phase, error.phase.value)
    hint = f" ({error.hint})" if error.hint else ""
    return f"the {what} failed: {error.message}{hint}; `upgrader resume {record.host}` retries it"


def _latest(ctx: "Context", host: str | None) -> list[tuple[RunRecord, list[dict[str, Any]]]]:
    hosts = [host] if host else ctx.store.hosts()
    out = []
    for h in hosts:
        ids = ctx.store.runs(h)
        if not ids:
            raise UnknownHost(f'no runs for host "{h}"')
        out.append(ctx.store.load_checked(h, ids[-1], repair=False))
    return out


def status(ctx: "Context", host: str | None) -> list[RunRecord]:
    """The latest run of `host` (or of every host). Reads only: no lock taken, nothing repaired."""
    return [record for record, _ in _latest(ctx, host)]


def states(ctx: "Context", host: str | None) -> list[RunStatus]:
    """status() with each run's state, and a client hold that may still be on."""
    return [replace(state_of(record, lock_holder(ctx.store, record.host), entries=entries), client_hold=held_clients_of(entries))
            for record, entries in _latest(ctx, host)]


def held_clients_of(entries: list[dict[str, Any]]) -> str | None:
    """"mailhost:25, 143" when the journal has a client hold begun and no release done."""
    from upgrader.steps.base import Journal, ReadOnlyJournal
    from upgrader.steps.client_hold import held_clients

    return held_clients(Journal.from_entries(ReadOnlyJournal(), entries))


def history(ctx: "Context") -> list[RunRecord]:
    """Every run of every host, oldest first."""
    return [ctx.store.load(h, r) for h in ctx.store.hosts() for r in ctx.store.runs(h)]


def history_states(ctx: "Context") -> list[RunStatus]:
    """history() with each run's state (only a host's latest run can be running)."""
    out = []
    for h in ctx.store.hosts():
        ids = ctx.store.runs(h)
        lock = lock_holder(ctx.store, h)
        out += [state_of(ctx.store.load(h, r), lock, latest=r == ids[-1],
                         entries=ctx.store.journal(h, r) if r == ids[-1] and lock is not None else None) for r in ids]
        if out and ids:  # only the latest run can hold clients (an earlier one finished, releasing)
            out[-1] = replace(out[-1], client_hold=held_clients_of(ctx.store.journal(h, ids[-1])))
    return out


def light_states(store: RunStore) -> list[RunStatus]:
    """states() of every host for the status table, read without pydantic (store/summary.py)."""
    out = []
    for row in latest_summaries(store):
        lock = lock_holder(store, row.host)
        entries = store.journal(row.host, row.run_id) if (row.parked and lock is not None) else None
        out.append(state_of(row, lock, entries=entries))
    return out
