"""Test hooks: pause the process at a named point so a test can SIGKILL it there.

UPGRADER_TEST_PAUSE holds comma-separated fnmatch patterns of points; when one is reached the
process writes the point's name to UPGRADER_TEST_PAUSE_FILE and sleeps until it is killed.
Points: `begin:<step key>` (journaled, side effect not yet done), `done:<step key>`,
`enter:<phase>` (after the checkpoint), `holding:<step key>` (held journaled, not yet the
transition), `operator:<retry|skip|revert>` (journaled, not yet the transition) from the
engine's events, and `after:<op>` from inside the fakes (the side effect happened, the journal
does not know yet) or `during:<op>` (half of it happened: e.g. `during:revert_checkpoint:NAME`,
the disks switched, the old images not yet deleted); `after:run@ROLE:CMD` (a command ran on that
role), `after:plan_copy` (a safe plan edit's copy replaced, run.json not yet told).
Unset (always, outside tests) the hooks cost one environment lookup.
"""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

from upgrader.events import Event, Held, OperatorAction, StepBegin, StepDone, Transition

ENV_PATTERNS = "UPGRADER_TEST_PAUSE"
ENV_FILE = "UPGRADER_TEST_PAUSE_FILE"


def maybe_pause(point: str) -> None:
    patterns = os.environ.get(ENV_PATTERNS)
    if not patterns:
        return
    if any(fnmatch.fnmatchcase(point, p.strip()) for p in patterns.split(",") if p.strip()):
        target = os.environ.get(ENV_FILE)
        if target:
            Path(target).write_text(point + "\n")
        while True:  # until the test kills us
            time.sleep(3600)


def pause_listener(event: Event) -> None:
    if isinstance(event, StepBegin):
        maybe_pause(f"begin:{event.key}")
    elif isinstance(event, StepDone) and not event.skipped:
        maybe_pause(f"done:{event.key}")
    elif isinstance(event, Transition):
        maybe_pause(f"enter:{event.dest.value}")
    elif isinstance(event, Held):  # the `held` entry is journaled, the transition not yet
        maybe_pause(f"holding:{event.step}")
    elif isinstance(event, OperatorAction):  # the operator's action is journaled, the transition not yet
        maybe_pause(f"operator:{event.action}")


def enabled() -> bool:
    return bool(os.environ.get(ENV_PATTERNS))
