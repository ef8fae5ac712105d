"""The phases of a run, as an Enum. No I/O, no dependencies: everything else imports this."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    PREFLIGHT = "preflight"
    SNAPSHOT = "snapshot"
    CLONE = "clone"
    UPGRADE = "upgrade"
    VALIDATE_STAGING = "validate_staging"
    PRESYNC = "presync"
    AWAIT_WINDOW = "await_window"
    CUTOVER = "cutover"
    VERIFY = "verify"
    COMPLETED = "completed"
    DECOMMISSIONED = "decommissioned"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    HELD = "held"  # a step before cutover failed: the twin is kept for the operator to repair

    def __str__(self) -> str:
        return self.value


# The forward path, in order. Each arrow is a checkpoint.
FORWARD: tuple[Phase, ...] = (
    Phase.PREFLIGHT,
    Phase.SNAPSHOT,
    Phase.CLONE,
    Phase.UPGRADE,
    Phase.VALIDATE_STAGING,
    Phase.PRESYNC,
    Phase.AWAIT_WINDOW,
    Phase.CUTOVER,
    Phase.VERIFY,
    Phase.COMPLETED,
    Phase.DECOMMISSIONED,
)

# A failure in one of these holds the run (plan `on_failure: hold`, the default): the twin exists
# and is worth repairing. Preflight and snapshot have nothing to keep; they abort.
HOLDABLE: tuple[Phase, ...] = (Phase.CLONE, Phase.UPGRADE, Phase.VALIDATE_STAGING, Phase.PRESYNC)

# Abort is legal only here: prod has not been touched yet.
BEFORE_CUTOVER: frozenset[Phase] = frozenset(FORWARD[: FORWARD.index(Phase.CUTOVER)]) | {Phase.HELD}

# Rollback is legal only here: the twin may already serve.
AFTER_CUTOVER: frozenset[Phase] = frozenset({Phase.CUTOVER, Phase.VERIFY, Phase.COMPLETED})

# A run in one of these has nothing more to do.
TERMINAL: frozenset[Phase] = frozenset(
    {Phase.DECOMMISSIONED, Phase.ABORTED, Phase.ROLLED_BACK, Phase.FAILED}
)



def retry_trigger(phase: Phase) -> str:
    """The trigger that takes a held run back into `phase` (one per holdable phase)."""
    return f"retry_{phase.value}"


# Ends that mean the upgrade did not happen.
UNSUCCESSFUL: frozenset[Phase] = frozenset({Phase.ABORTED, Phase.ROLLED_BACK, Phase.FAILED})

# A run that stops in one of these may have left prod down (its link cut, its services stopped):
# killed here, it is URGENT (`upgrader status`, `run-due`) and `run-due` resumes it at once.
PROD_AT_STAKE: frozenset[Phase] = frozenset({Phase.CUTOVER, Phase.VERIFY, Phase.ROLLING_BACK})
