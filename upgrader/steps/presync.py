"""presync: copy prod's data to the twin while prod serves, in passes until one moves little, and
time the plan's service commands on the twin for the downtime forecast (upgrader/forecast.py).

The passes are `presync.pass[N]`, numbered on across the whole run. A *round* is the passes of one
convergence: the pre-sync phase's own (round None), and one more each time the window step is
about to cut over after a wait (`window[N]`, `now`, `approved`: see steps/window.py), because
mail kept arriving while the run was parked. Each pass journals the round it belongs to, so a
round interrupted by a crash goes on where it was (a pass in doubt is redone under its own key:
rsync is idempotent) and a round that converged is never run again."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from upgrader.events import Notice
from upgrader.forecast import QUIESCE_KEY, SERVICE_START_KEY
from upgrader.phases import Phase
from upgrader.step_keys import presync_pass_key, presync_pass_number, presync_passes
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.notices import forecast_of
from upgrader.steps.service_probe import service_probe
from upgrader.steps.sync import run_commands, run_plain_commands, sync_once
from upgrader.steps.upgrade import merge_checkpoints

if TYPE_CHECKING:
    from upgrader.plan import Plan

FORECAST_AFTER_PRESYNC = "presync.forecast"  # the forecast as the pre-sync phase left it (parts, typed: forecast.py)
ROUND = "round"  # in a pass's outputs: the round it belongs to (None: the pre-sync phase's)


def converged(plan: "Plan", stats: dict[str, Any]) -> bool:
    policy = plan.sync.presync
    return int(stats.get("files", 0)) <= policy.until_files and int(stats.get("bytes", 0)) <= policy.until_bytes


def converge(ctx: StepContext, round_: str | None) -> list[dict[str, Any]]:
    """Pre-sync passes of `round_` until one moves <= until_files / until_bytes, at most
    max_passes of them; returns the round's passes (outputs, in order). A round already
    finished runs nothing."""
    plan, journal = ctx.plan, ctx.journal
    policy = plan.sync.presync
    mine = [out for _, out in presync_passes(journal.done) if out.get(ROUND) == round_]
    numbers = [n for n in map(presync_pass_number, [*journal.begun, *journal.done]) if n is not None]
    last = max(numbers, default=0)
    while not (mine and converged(plan, mine[-1])):
        if len(mine) >= policy.max_passes:
            ctx.emit(Notice(f"pre-sync did not converge in {policy.max_passes} passes; the forecast is the last pass", "warning"))
            break
        in_doubt = last > 0 and presync_pass_key(last) not in journal.done
        number = last if in_doubt else last + 1
        mine.append(sync_once(ctx, presync_pass_key(number), "prod", "staging", final=False,
                              extra={ROUND: round_} if round_ is not None else None))
        last = number
    return mine


def rehearse(ctx: StepContext) -> None:
    """The plan's quiesce commands, then its resume commands until the service answers, on the
    twin (staging: it serves nobody), each timed: the quiesce and service-start parts of the
    forecast. A resume that does not bring the service back fails here, before any cutover."""
    plan = ctx.plan
    run_commands(ctx, QUIESCE_KEY, "staging", list(plan.sync.quiesce), "rehearse the quiesce")

    def start(_: dict[str, Any]) -> dict[str, Any]:
        began = time.monotonic()
        run_plain_commands(ctx, SERVICE_START_KEY, "staging", list(plan.sync.resume), "rehearse the service start")
        probe = service_probe(plan)
        if probe is not None:
            # the same wait as cutover.service_back, so the forecast's part measures what the window will
            ctx.ports.prober.wait_answers("staging", probe)
        return {"commands": len(plan.sync.resume), "seconds": round(time.monotonic() - began, 3),
                "waited_for_port": probe.port if probe else None}

    ctx.once(SERVICE_START_KEY, f"rehearse the service start on staging ({len(plan.sync.resume)} command(s))", start)


class Presync:
    phase = Phase.PRESYNC

    def describe(self, plan: "Plan") -> list[str]:
        policy = plan.sync.presync
        paths = ", ".join(p.path for p in plan.sync.paths)
        return [
            f"rsync {paths} prod -> twin while prod serves, through the orchestrator (networks stay apart)",
            f"repeat until a pass moves <= {policy.until_files} files and <= {policy.until_bytes} bytes "
            f"(at most {policy.max_passes} passes)",
            "on the twin, timed for the downtime forecast: quiesce "
            f"({'; '.join(plan.sync.quiesce) or 'no commands'}), then resume "
            f"({'; '.join(plan.sync.resume) or 'no commands'}) until the service answers",
            "downtime forecast = last pass + quiesce + takeover (estimate) + service start",
            f"merge {plan.twin_name}'s checkpoints back into its disk (no revert after this; a failure holds the run)",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        passes = converge(ctx, None)
        rehearse(ctx)
        found = forecast_of(ctx)
        assert found is not None  # converge ran at least one pass
        outputs = ctx.once(FORECAST_AFTER_PRESYNC, f"downtime forecast: {found.describe()} (last of {len(passes)} pass(es))",
                           lambda _: found.to_outputs())
        merge_checkpoints(ctx)  # the twin's chain as clone made it before the cutover; a failure here holds
        return Outcome({"passes": len(passes), "forecast_seconds": outputs["total"]})
