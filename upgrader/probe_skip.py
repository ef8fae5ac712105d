"""The journaled outputs of an upgrade step that its plan `probe:` found done before it ran
(a pydantic model: kept out of step_keys, which the light status path imports)."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ValidationError

PROBE_SKIP_REASON = "probe: already done"


class SkippedByProbe(BaseModel):
    """An upgrade step's journaled outputs when the plan's `probe:` exited 0 before the step ever
    ran: the step was not run (it was done already, e.g. by hand or by an earlier attempt)."""

    skipped: Literal[True] = True
    reason: Literal["probe: already done"] = PROBE_SKIP_REASON
    probe: str  # the probe command as run (masked)
    probe_rc: int = 0


def skipped_by_probe(outputs: Mapping[str, Any]) -> SkippedByProbe | None:
    """The outputs as a `SkippedByProbe`, or None for a step that ran (or was skipped otherwise)."""
    if outputs.get("reason") != PROBE_SKIP_REASON:
        return None
    try:
        return SkippedByProbe.model_validate(dict(outputs))
    except ValidationError:
        return None
