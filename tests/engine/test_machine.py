"""Every legal and every illegal transition of the run machine."""

from __future__ import annotations

import pytest

from upgrader.errors import IllegalAction
from upgrader.machine import TRIGGERS, RunMachine, legal_moves, mermaid
from upgrader.phases import AFTER_CUTOVER, BEFORE_CUTOVER, FORWARD, HOLDABLE, Phase, retry_trigger

EXPECTED: dict[Phase, dict[str, Phase]] = {p: {} for p in Phase}
for a, b in zip(FORWARD, FORWARD[1:]):
    EXPECTED[a]["advance"] = b
for p in BEFORE_CUTOVER:
    EXPECTED[p]["abort"] = Phase.ABORTED
for p in AFTER_CUTOVER:
    EXPECTED[p]["rollback"] = Phase.ROLLING_BACK
EXPECTED[Phase.ROLLING_BACK]["rolled_back"] = Phase.ROLLED_BACK
EXPECTED[Phase.ROLLING_BACK]["fail"] = Phase.FAILED
EXPECTED[Phase.ABORTED]["fail"] = Phase.FAILED
for p in HOLDABLE:
    EXPECTED[p]["hold"] = Phase.HELD
    EXPECTED[Phase.HELD][retry_trigger(p)] = p

ALL = [(phase, trigger) for phase in Phase for trigger in TRIGGERS]


def test_table_is_what_we_mean() -> None:
    assert legal_moves() == EXPECTED


@pytest.mark.parametrize(("phase", "trigger"), [pt for pt in ALL if pt[1] in EXPECTED[pt[0]]])
def test_legal(phase: Phase, trigger: str) -> None:
    seen: list[tuple[Phase, Phase]] = []
    machine = RunMachine(phase, on_change=lambda a, b: seen.append((a, b)))
    assert machine.fire(trigger) == EXPECTED[phase][trigger]
    assert seen == [(phase, EXPECTED[phase][trigger])]


@pytest.mark.parametrize(("phase", "trigger"), [pt for pt in ALL if pt[1] not in EXPECTED[pt[0]]])
def test_illegal(phase: Phase, trigger: str) -> None:
    seen: list[tuple[Phase, Phase]] = []
    machine = RunMachine(phase, on_change=lambda a, b: seen.append((a, b)))
    with pytest.raises(IllegalAction) as info:
        machine.fire(trigger)
    assert machine.state == phase and seen == []
    assert phase.value in info.value.message


def test_no_auto_transitions() -> None:
    machine = RunMachine(Phase.PREFLIGHT)
    assert not hasattr(machine, "to_cutover")


def test_abort_after_cutover_hints_rollback() -> None:
    with pytest.raises(IllegalAction) as info:
        RunMachine(Phase.VERIFY).fire("abort")
    assert "rollback" in (info.value.hint or "")


def test_mermaid_lists_every_phase() -> None:
    text = mermaid()
    assert text.lstrip("-\n").count("stateDiagram-v2") == 1 or "stateDiagram-v2" in text
    for phase in Phase:
        assert phase.name in text


def test_held_is_before_cutover_and_not_terminal() -> None:
    from upgrader.phases import TERMINAL

    assert Phase.HELD in BEFORE_CUTOVER and Phase.HELD not in TERMINAL
    assert RunMachine(Phase.HELD).fire("abort") == Phase.ABORTED


def test_preflight_and_snapshot_cannot_hold() -> None:
    for phase in (Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.AWAIT_WINDOW, Phase.CUTOVER):
        assert not RunMachine(phase).can("hold")
