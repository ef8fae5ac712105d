"""run.json against the journal: the journal's `transition` entries are the truth about the phase.

The engine journals a transition, then saves run.json. A crash between the two leaves the journal
exactly one transition ahead: run.json is rolled forward. Any other disagreement is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from upgrader.errors import StateCorrupt
from upgrader.phases import Phase

INITIAL_PHASE = Phase.PREFLIGHT


def phase_behind(phase: Phase, entries: list[dict[str, Any]], run_json: Path, journal: Path) -> Phase | None:
    """None when run.json's `phase` is what the journal's last transition reached (or the run never
    moved: preflight, no transition); the phase to roll forward to when run.json is exactly one
    transition behind; StateCorrupt otherwise."""
    transitions = [e for e in entries if e.get("kind") == "transition"]
    if not transitions:
        if phase == INITIAL_PHASE:
            return None
        raise _disagree(run_json, journal, phase, f"{journal.name} has no transition at all")
    last = transitions[-1]
    source, dest = last.get("source"), last.get("dest")
    if dest == phase.value:
        return None
    if source != phase.value:
        raise _disagree(run_json, journal, phase, f"the last transition in {journal.name} went {source} -> {dest}")
    try:
        return Phase(dest)
    except ValueError:
        raise StateCorrupt(
            f"{journal}: the last transition goes to an unknown phase {dest!r}",
            hint=f"look at the last `transition` line of {journal}",
        ) from None


def _disagree(run_json: Path, journal: Path, phase: Phase, what: str) -> StateCorrupt:
    return StateCorrupt(
        f"{run_json} says phase {phase.value}, but {what}: run.json and the journal disagree",
        hint=(
            f"the journal ({journal}) is the truth about transitions; if it is complete, set \"phase\" in "
            f"{run_json} to the last transition's dest; if it lost lines, restore it from a backup. "
            "Check the VMs by hand first: a cutover may have happened"
        ),
    )
