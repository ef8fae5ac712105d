"""The downtime forecast: how long the cutover will keep the service away, from its parts.

    forecast = last pre-sync pass + quiesce + takeover + service start

* **last pre-sync pass**: what the final sync will take (it moves what arrived since that pass);
  measured, the last of the passes (by number: pass 10 comes after pass 9): its rsync (`seconds`)
  plus its close (`close_seconds`, standing in for the revoke of the key line that follows the
  final pass in the window). Not its set-up (`setup_seconds`): the cutover opens its sync
  session before the quiesce. A pass recorded before the split has only `seconds` (all three).
* **quiesce**: the plan's `sync.quiesce` commands. Measured on the twin: the pre-sync rehearses
  them there (`presync.rehearse.quiesce`; the twin serves nobody on staging).
* **takeover**: the NIC moves (and, for ip_move, claiming the address with gratuitous ARPs).
  They cannot be rehearsed without touching prod: a documented estimate per strategy,
  `TAKEOVER_ESTIMATE`, from the lab (docs/benchmarks.md): two libvirt calls, ~0.1 s; ip_move
  adds ~0.3-0.5 s for the claim over SSH.
* **service start**: the plan's `sync.resume` commands until the service answers at its port.
  Measured on the twin by the same rehearsal (`presync.rehearse.service_start`).

A part that was not measured in this run (a run from before the rehearsal existed, a rehearsal
without a network check to wait for) uses its estimate and says so (`estimated`). Pure data:
the steps measure, the UI renders `Forecast.from_outputs`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from upgrader.step_keys import presync_pass_key, presync_passes

TAKEOVER_ESTIMATE = {"mac_move": 0.1, "ip_move": 0.5}  # seconds; see the module doc
QUIESCE_ESTIMATE = 1.0  # seconds, when the plan has quiesce commands and they were not timed
SERVICE_START_ESTIMATE = 2.0  # seconds, when the plan has resume commands and they were not timed

QUIESCE_KEY = "presync.rehearse.quiesce"  # the plan's quiesce commands, timed on the twin
SERVICE_START_KEY = "presync.rehearse.service_start"  # the resume commands until the service answers, on the twin
FORECAST_KEY = "forecast"  # in the await_window decision's outputs


@dataclass(frozen=True)
class Forecast:
    last_pass: float  # seconds of the last pre-sync pass: its rsync + its close, not its set-up
    quiesce: float
    takeover: float
    service_start: float
    last_pass_key: str | None = None
    estimated: tuple[str, ...] = field(default=())  # the parts that are estimates, not measured in this run

    @property
    def total(self) -> float:
        return round(self.last_pass + self.quiesce + self.takeover + self.service_start, 3)

    def to_outputs(self) -> dict[str, Any]:
        return {**asdict(self), "estimated": list(self.estimated), "total": self.total}

    @classmethod
    def from_outputs(cls, data: Mapping[str, Any] | None) -> "Forecast | None":
        if not data:
            return None
        return cls(last_pass=float(data["last_pass"]), quiesce=float(data["quiesce"]), takeover=float(data["takeover"]),
                   service_start=float(data["service_start"]), last_pass_key=data.get("last_pass_key"),
                   estimated=tuple(data.get("estimated") or ()))

    def describe(self) -> str:
        """`2.11 s (last pre-sync pass 1.10 + quiesce 0.20 + takeover 0.10 estimated + service start 0.71)`"""
        parts = [("last pre-sync pass", "last_pass", self.last_pass), ("quiesce", "quiesce", self.quiesce),
                 ("takeover", "takeover", self.takeover), ("service start", "service_start", self.service_start)]
        shown = " + ".join(f"{label} {value:.2f}" + (" estimated" if name in self.estimated else "")
                           for label, name, value in parts)
        return f"{self.total:.2f} s ({shown})"


def forecast(outputs: Mapping[str, Mapping[str, Any]], *, strategy: str, quiesce_commands: int,
             resume_commands: int) -> Forecast | None:
    """The forecast from a run's step outputs (journal done index or run.json outputs); None
    before the first pre-sync pass."""
    passes = presync_passes(outputs)
    if not passes:
        return None
    number, last = passes[-1]
    estimated: list[str] = []
    quiesce = _seconds(outputs.get(QUIESCE_KEY))
    if quiesce is None:
        quiesce = QUIESCE_ESTIMATE if quiesce_commands else 0.0
        if quiesce_commands:
            estimated.append("quiesce")
    start = _seconds(outputs.get(SERVICE_START_KEY))
    if start is None:
        start = SERVICE_START_ESTIMATE if resume_commands else 0.0
        if resume_commands:
            estimated.append("service_start")
    estimated.append("takeover")
    last_pass = float(last.get("seconds") or 0.0) + float(last.get("close_seconds") or 0.0)
    return Forecast(last_pass=round(last_pass, 3), quiesce=quiesce,
                    takeover=TAKEOVER_ESTIMATE.get(strategy, max(TAKEOVER_ESTIMATE.values())), service_start=start,
                    last_pass_key=presync_pass_key(number), estimated=tuple(estimated))


def _seconds(data: Mapping[str, Any] | None) -> float | None:
    if not data or data.get("seconds") is None:
        return None
    return float(data["seconds"])
