"""`status --json` and `list --json`: one versioned document (docs/json-schema.md).

    {"schema": "upgrader.status/1", "runs": [{"host": ..., "run_id": ..., "state": ..., ...}]}

A consumer checks `schema`; within version 1 keys are only ever added, never renamed, removed or
retyped. `outputs` is the steps' own (keys and fields follow the steps) and not pinned."""

from __future__ import annotations

from typing import Any

from upgrader.app_status import RunStatus
from upgrader.notice_keys import customers_not_told
from upgrader.record import PhaseTiming

SCHEMA = "upgrader.status/1"


def status_document(statuses: list[RunStatus]) -> dict[str, Any]:
    return {"schema": SCHEMA, "runs": [run_json(s) for s in statuses]}


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _timing(t: PhaseTiming) -> dict[str, Any]:
    return {"phase": t.phase.value, "status": t.status, "started": _time(t.started), "ended": _time(t.ended),
            "seconds": t.seconds}


def run_json(status: RunStatus) -> dict[str, Any]:
    r, holder = status.record, status.holder
    return {
        "host": r.host,
        "run_id": r.run_id,
        "state": status.state.value,
        "phase": r.phase.value,
        "finished": r.finished,
        "created": _time(r.created),
        "updated": _time(r.updated),
        "hint": status.hint,
        "parked": r.parked,
        "held": r.held.model_dump(mode="json") if r.held else None,
        "error": r.error.model_dump(mode="json") if r.error else None,
        "cleanup_error": r.cleanup_error.model_dump(mode="json") if r.cleanup_error else None,
        "holder": None if holder is None else {
            "pid": holder.pid, "hostname": holder.hostname, "since": _time(holder.since),
            "command": holder.command, "alive": holder.alive,
        },
        "warnings": list(r.warnings),
        "customers_not_told": customers_not_told(r.outputs),
        "client_hold": status.client_hold,
        "plan": {"path": r.plan_path, "sha256": r.plan_sha256},
        "vm": r.vm.model_dump(mode="json") if r.vm else None,
        "options": r.options.model_dump(mode="json"),
        "timings": [_timing(t) for t in r.timings],
        "outputs": r.outputs,
    }
