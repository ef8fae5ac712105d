"""What the engine tells the world. The engine emits these; the rich UI, the JSON log and the
test hooks are listeners. No listener may raise into the engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from upgrader.phases import Phase


@dataclass(frozen=True)
class Event:
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["event"] = type(self).__name__
        return {k: (v.value if isinstance(v, Phase) else v) for k, v in data.items()}


@dataclass(frozen=True)
class RunStarted(Event):
    host: str
    run_id: str
    phase: Phase
    resumed: bool


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: Phase


@dataclass(frozen=True)
class PhaseDone(Event):
    phase: Phase
    seconds: float


@dataclass(frozen=True)
class PhaseFailed(Event):
    phase: Phase
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Transition(Event):
    source: Phase
    dest: Phase
    trigger: str


@dataclass(frozen=True)
class StepBegin(Event):
    """Journaled `begin`; the side effect comes next."""

    key: str
    title: str


@dataclass(frozen=True)
class StepInDoubt(Event):
    """A `begin` without `done` was found on resume; the step's probe decides."""

    key: str
    already_done: bool


@dataclass(frozen=True)
class StepDone(Event):
    """Journaled `done`."""

    key: str
    outputs: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # it had been done before (journal or probe)
    reason: str | None = None  # why it was skipped without ever running (e.g. "probe: already done")


@dataclass(frozen=True)
class StepOutput(Event):
    key: str
    line: str


@dataclass(frozen=True)
class Notice(Event):
    text: str
    level: str = "info"  # info | warning | error


@dataclass(frozen=True)
class Parked(Event):
    phase: Phase
    reason: str
    again: bool = False  # resumed and parked again at the same place, nothing changed (run-due from cron)


@dataclass(frozen=True)
class Held(Event):
    """The run stopped in `held`: the twin is kept; `held` says what failed (record.held)."""

    host: str
    phase: Phase  # the phase the run was held in
    step: str | None
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class OperatorAction(Event):
    """An operator's retry/skip/revert of a held run is journaled; the transition comes next."""

    action: str
    step: str | None


@dataclass(frozen=True)
class RunEnded(Event):
    phase: Phase
    finished: bool
    ok: bool


Listener = Callable[[Event], None]
