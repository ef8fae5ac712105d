"""The run record: what run.json holds. Plain data (pydantic), never a pickle."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from upgrader.clock import utcnow
from upgrader.phases import Phase

RECORD_VERSION = 1


def new_run_id(now: dt.datetime | None = None, after: str | None = None) -> str:
    """Sortable and unique: 20261124T201500Z-0c35a3f (the second, its microseconds in hex, a random
    byte). `after`: the host's latest run id; the new one sorts after it even if the clock did not
    move on (a frozen test clock, a clock stepped back): the store takes a host's last id in sorted
    order as its current run."""
    now = now or utcnow()
    run_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{now.microsecond:05x}{secrets.token_hex(1)}"
    if after is not None and run_id <= after:
        run_id = f"{after}{secrets.token_hex(1)}"  # a longer string with `after` as prefix sorts after it
    return run_id


class PhaseTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Phase
    started: dt.datetime
    ended: dt.datetime | None = None
    status: str = "running"  # running | done | failed | parked

    @property
    def seconds(self) -> float | None:
        if self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


class RunError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Phase
    message: str
    hint: str | None = None
    kind: str = "StepFailed"


class HeldStep(BaseModel):
    """Why a run is held: the step that failed and its Result, for `status` and the operator."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase  # the phase `retry` goes back to
    step: str | None = None  # the journal key that failed ("upgrade[4]"), None if it failed outside one
    title: str | None = None  # what the step does ("portupgrade -af")
    message: str
    hint: str | None = None
    error_kind: str = "StepFailed"
    command: str | None = None  # the failed command, secrets masked
    rc: int | None = None
    tail: str | None = None  # the last lines of its output
    since: dt.datetime = Field(default_factory=utcnow)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "HeldStep":
        """From a `held` journal entry (its other keys, kind and ts, are the journal's)."""
        return cls.model_validate({k: v for k, v in entry.items() if k in cls.model_fields})


class RunOptions(BaseModel):
    """What the operator asked for when starting/resuming; recorded so a resume behaves alike."""

    model_config = ConfigDict(extra="forbid")

    now: bool = False  # cut over without waiting for a window


class VmIdentity(BaseModel):
    """The VM a run claims: the hypervisor and the domain's UUID (a name can be reused or known
    under two host names; the UUID cannot)."""

    model_config = ConfigDict(extra="forbid")

    uri: str
    domain: str
    uuid: str


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = RECORD_VERSION
    run_id: str
    host: str
    plan_path: str
    plan_sha256: str
    phase: Phase = Phase.PREFLIGHT
    finished: bool = False  # the terminal phase's own step (e.g. abort cleanup) is done too
    created: dt.datetime = Field(default_factory=utcnow)
    updated: dt.datetime = Field(default_factory=utcnow)
    options: RunOptions = Field(default_factory=RunOptions)
    vm: VmIdentity | None = None  # None only if the source domain did not exist at start
    # outputs of every step that finished, by step key ("snapshot", "upgrade[2]", ...)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    timings: list[PhaseTiming] = Field(default_factory=list)
    error: RunError | None = None  # the failure that sent the run to abort/rollback (the cause)
    cleanup_error: RunError | None = None  # a cleanup/decommission step that failed; resume retries
    # why the run is waiting, when it is (e.g. "window opens 2026-11-29T01:30+01:00")
    parked: str | None = None
    held: HeldStep | None = None  # set while phase is held
    # what an operator must know about the end state (e.g. data left on the twin only)
    warnings: list[str] = Field(default_factory=list)

    def output(self, step: str) -> dict[str, Any]:
        return self.outputs.get(step, {})

    @property
    def active(self) -> bool:
        return not self.finished


def held_from_journal(entries: list[dict[str, Any]]) -> HeldStep | None:
    """The last `held` journal entry (written before the transition to held): what run.json
    lost when a crash came between the transition's journal line and its save."""
    for entry in reversed(entries):
        if entry.get("kind") == "held":
            return HeldStep.from_entry(entry)
    return None
