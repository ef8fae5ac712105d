"""One module per phase. STEPS maps the phase a run is in to the step that runs there."""

from __future__ import annotations

from upgrader.phases import Phase
from upgrader.steps.abort import AbortCleanup
from upgrader.steps.base import Step
from upgrader.steps.clone import Clone
from upgrader.steps.cutover import Cutover
from upgrader.steps.decommission import Completed
from upgrader.steps.preflight import Preflight
from upgrader.steps.rollback import RollingBack
from upgrader.steps.snapshot import Snapshot
from upgrader.steps.presync import Presync
from upgrader.steps.upgrade import Upgrade
from upgrader.steps.validate import ValidateStaging, Verify
from upgrader.steps.window import AwaitWindow

STEPS: dict[Phase, Step] = {
    step.phase: step
    for step in (
        Preflight(),
        Snapshot(),
        Clone(),
        Upgrade(),
        ValidateStaging(),
        Presync(),
        AwaitWindow(),
        Cutover(),
        Verify(),
        Completed(),
        RollingBack(),
        AbortCleanup(),
    )
}
