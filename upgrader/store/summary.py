"""What the `upgrader status` table shows of a run, read without pydantic (whose import and model
building alone take longer than the whole command may: docs/benchmarks.md, start-up).

The light reading checks what the table shows (the fields' types, host and run id, the phase
reconciled with the journal as RunStore.load_checked does) and that run.json has no field a run
record does not have. Anything it is not sure of goes through RunStore.load_checked, which
validates the whole record and raises the exact error (exit 4). `upgrader status HOST` always
validates the whole record."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from upgrader.phases import Phase
from upgrader.store.files import check_dir, read_private
from upgrader.store.reconcile import phase_behind
from upgrader.store.runstore import JOURNAL_FILE, RUN_FILE, RunStore

# RunRecord's fields (tests/store/test_summary.py keeps this equal to RunRecord.model_fields)
RECORD_FIELDS = frozenset({
    "version", "run_id", "host", "plan_path", "plan_sha256", "phase", "finished", "created", "updated", "options",
    "vm", "outputs", "timings", "error", "cleanup_error", "parked", "held", "warnings",
})
_REQUIRED = ("run_id", "host", "plan_path", "plan_sha256", "updated")


@dataclass(frozen=True)
class CleanupSummary:
    """A run's cleanup_error as the state of a run needs it (record.RunError without pydantic)."""

    phase: Phase
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class RunSummary:
    host: str
    run_id: str
    phase: Phase
    finished: bool
    parked: str | None
    cleanup_error: CleanupSummary | None  # the cleanup step's failure
    updated: dt.datetime
    outputs: dict[str, dict[str, Any]]  # the step outputs as run.json has them (the table reads a few)


class _Unsure(Exception):
    """The light reading cannot vouch for this run.json: the full validation decides."""


def latest_summaries(store: RunStore) -> list[RunSummary]:
    """The latest run of every host, as `app_status.status(ctx, None)` has them."""
    return [summary(store, host, store.runs(host)[-1]) for host in store.hosts()]


def summary(store: RunStore, host: str, run_id: str) -> RunSummary:
    try:
        return _light(store, host, run_id)
    except _Unsure:
        record, _ = store.load_checked(host, run_id, repair=False)
        error = record.cleanup_error
        cleanup = CleanupSummary(error.phase, error.message, error.hint) if error is not None else None
        return RunSummary(record.host, record.run_id, record.phase, record.finished, record.parked, cleanup,
                          record.updated, record.outputs)


def _light(store: RunStore, host: str, run_id: str) -> RunSummary:
    directory = store.run_dir(host, run_id)
    if not all(check_dir(d) for d in (store.root, directory.parent, directory)):
        raise _Unsure
    try:
        data = json.loads(read_private(directory / RUN_FILE))
    except (OSError, ValueError):
        raise _Unsure from None
    if not isinstance(data, dict) or not RECORD_FIELDS.issuperset(data) or any(k not in data for k in _REQUIRED):
        raise _Unsure
    if data["host"] != host or data["run_id"] != run_id:
        raise _Unsure
    phase, finished, parked, cleanup = data.get("phase", Phase.PREFLIGHT.value), data.get("finished", False), \
        data.get("parked"), data.get("cleanup_error")
    if (phase not in {p.value for p in Phase} or not isinstance(finished, bool) or not isinstance(parked, (str, type(None)))
            or not isinstance(cleanup, (dict, type(None))) or not isinstance(data["updated"], str)):
        raise _Unsure
    try:
        updated = dt.datetime.fromisoformat(data["updated"])
    except ValueError:
        raise _Unsure from None
    cleanup = _cleanup(cleanup)
    outputs = data.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(v, dict) for v in outputs.values()):
        raise _Unsure
    entries = store.journal(host, run_id)
    dest = phase_behind(Phase(phase), entries, directory / RUN_FILE, directory / JOURNAL_FILE)
    if dest is not None:  # as load_checked(repair=False): rolled forward in memory
        phase, parked = dest.value, None
    return RunSummary(host, run_id, Phase(phase), finished, parked, cleanup, updated, outputs)


def _cleanup(data: dict[str, Any] | None) -> CleanupSummary | None:
    if data is None:
        return None
    phase, message, hint = data.get("phase"), data.get("message"), data.get("hint")
    if phase not in {p.value for p in Phase} or not isinstance(message, str) or not isinstance(hint, (str, type(None))):
        raise _Unsure
    return CleanupSummary(Phase(phase), message, hint)
