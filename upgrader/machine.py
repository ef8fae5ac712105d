"""The run's state machine (transitions): phases, explicit transitions, no I/O.

Triggers:
  advance         every forward phase -> the next one (preflight -> snapshot -> ... -> decommissioned)
  abort           any phase before cutover -> aborted (the abort step then cleans staging up)
  rollback        cutover / verify / completed -> rolling_back
  rolled_back     rolling_back -> rolled_back
  fail            rolling_back / aborted -> failed (cleanup itself failed: a human must look)
  hold            clone / upgrade / validate_staging / presync -> held (a step failed; the twin is kept)
  retry_<phase>   held -> the phase it was held in (`upgrader retry`, `skip`, `revert`, `resume`)

`auto_transitions=False`: there is no `to_x()` that could skip a guard. The engine persists the
state after every change through the `on_change` callback (transitions' `after_state_change`).
"""

from __future__ import annotations

from typing import Callable

from transitions import Machine, MachineError

from upgrader.errors import IllegalAction
from upgrader.phases import AFTER_CUTOVER, BEFORE_CUTOVER, FORWARD, HOLDABLE, Phase, retry_trigger

TRANSITIONS: list[dict[str, object]] = [
    *(
        {"trigger": "advance", "source": a, "dest": b}
        for a, b in zip(FORWARD, FORWARD[1:], strict=False)
    ),
    {"trigger": "abort", "source": [*FORWARD[: FORWARD.index(Phase.CUTOVER)], Phase.HELD], "dest": Phase.ABORTED},
    {"trigger": "rollback", "source": sorted(AFTER_CUTOVER, key=FORWARD.index), "dest": Phase.ROLLING_BACK},
    {"trigger": "rolled_back", "source": Phase.ROLLING_BACK, "dest": Phase.ROLLED_BACK},
    {"trigger": "fail", "source": [Phase.ROLLING_BACK, Phase.ABORTED], "dest": Phase.FAILED},
    {"trigger": "hold", "source": list(HOLDABLE), "dest": Phase.HELD},
    *({"trigger": retry_trigger(p), "source": Phase.HELD, "dest": p} for p in HOLDABLE),
]

TRIGGERS: tuple[str, ...] = ("advance", "abort", "rollback", "rolled_back", "fail", "hold",
                             *(retry_trigger(p) for p in HOLDABLE))


class RunMachine:
    """Holds `state` (a Phase). Fire triggers with `fire("advance")`."""

    state: Phase

    def __init__(self, initial: Phase, on_change: Callable[[Phase, Phase], None] | None = None):
        self._on_change = on_change
        self._previous = initial
        self.machine = Machine(
            model=self,
            states=Phase,
            transitions=TRANSITIONS,
            initial=initial,
            auto_transitions=False,
            send_event=True,
            after_state_change=self._changed,
            model_attribute="state",
        )

    def _changed(self, event: object) -> None:
        previous, self._previous = self._previous, self.state
        if self._on_change is not None:
            self._on_change(previous, self.state)

    def can(self, trigger: str) -> bool:
        return trigger in self.machine.get_triggers(self.state)

    def fire(self, trigger: str) -> Phase:
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}")
        if not self.can(trigger):
            raise IllegalAction(
                f"cannot {trigger.replace('_', ' ')} a run in phase {self.state.value}",
                hint=_hint_for(trigger),
            )
        try:
            getattr(self, trigger)()
        except MachineError as exc:  # pragma: no cover - can() guards this
            raise IllegalAction(str(exc)) from exc
        return self.state


def _hint_for(trigger: str) -> str | None:
    if trigger == "abort":
        return "abort is possible only before cutover; after it, use `upgrader rollback HOST`"
    if trigger.startswith("retry_"):
        return "only a held run is retried; `upgrader status HOST` shows where the run is"
    if trigger == "rollback":
        return "rollback is possible only from cutover on, while the old VM is kept; before it, use `upgrader abort HOST`"
    return None


def legal_moves() -> dict[Phase, dict[str, Phase]]:
    """Every (phase, trigger) -> destination; used by tests and the docs."""
    moves: dict[Phase, dict[str, Phase]] = {p: {} for p in Phase}
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for s in sources:  # type: ignore[union-attr]
            moves[s][str(t["trigger"])] = t["dest"]  # type: ignore[index,assignment]
    return moves


def mermaid() -> str:
    """The state diagram as mermaid text, drawn by transitions' own diagram extension
    (docs/state-machine.md embeds it; a test keeps it current)."""
    from transitions.extensions import GraphMachine

    class _Model:
        pass

    model = _Model()
    GraphMachine(
        model=model,
        states=Phase,
        transitions=TRANSITIONS,
        initial=Phase.PREFLIGHT,
        auto_transitions=False,
        graph_engine="mermaid",
    )
    drawn = str(model.get_graph().draw(None))  # type: ignore[attr-defined]
    # keep the diagram, drop the front matter and the highlight styling of the "current" state
    body = drawn[drawn.index("stateDiagram-v2"):].splitlines()
    return "\n".join(line for line in body if not line.strip().startswith(("Class ", "classDef"))).strip() + "\n"
