"""cutover: quiesce prod, final sync (must be complete), take the network over, start services
on the new prod. The clock of the downtime runs from quiesce to resume."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from upgrader.phases import Phase
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.service_probe import service_probe
from upgrader.steps.sync import run_commands, sync_once

if TYPE_CHECKING:
    from upgrader.plan import Plan


class Cutover:
    phase = Phase.CUTOVER

    def describe(self, plan: "Plan") -> list[str]:
        return [
            f"quiesce prod: {'; '.join(plan.sync.quiesce) or '(no commands)'}",
            "final rsync prod -> twin (must exit 0)",
            f"takeover ({plan.takeover.strategy}): {plan.source.domain}'s NICs link-down, "
            f"{plan.twin_name}'s NICs onto {plan.takeover.production_network}"
            + (f"; the new prod claims {plan.takeover.address} with gratuitous ARPs" if plan.takeover.strategy == "ip_move" else ""),
            f"resume services on the new prod: {'; '.join(plan.sync.resume) or '(no commands)'}",
            "persist the takeover in both VMs' definitions (the window changed the running VMs only)",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        started = time.monotonic()
        run_commands(ctx, "cutover.quiesce", "prod", list(plan.sync.quiesce), "quiesce")
        final = sync_once(ctx, "cutover.final_sync", "prod", "staging", final=True)
        moved = ctx.once(
            "cutover.takeover",
            f"take the network over ({plan.takeover.strategy})",
            lambda _: takeover.takeover(ctx, live_only=True),
            lambda _: {"strategy": plan.takeover.strategy, "probed": True} if takeover.taken_over(ctx) else None,
        )
        claimed = takeover.claim_address(ctx, "cutover.claim_address")
        if claimed:
            moved = {**moved, **claimed}
        run_commands(ctx, "cutover.resume", "prod", list(plan.sync.resume), "resume services")
        back = ctx.once("cutover.service_back", "wait until the service answers at its address", lambda _: service_back(ctx))
        takeover.persist(ctx, "cutover.persist_nics")  # the window moved the live domains only
        out: dict[str, Any] = {"final_sync": final, "takeover": moved, "seconds": round(time.monotonic() - started, 3),
                               "observed_downtime": back.get("downtime")}
        return Outcome(out)


def service_port(plan: "Plan") -> tuple[str, int] | None:
    """(kind, port) of the check that tells the service is back (steps/service_probe.py)."""
    probe = service_probe(plan)
    return (probe.kind, probe.port) if probe else None


def service_back(ctx: StepContext) -> dict[str, Any]:
    """Observed downtime: from the moment prod was quiesced (its journal `begin`, so a crash in
    between counts too) until the service answers again at its address, from the client side."""
    probe = service_probe(ctx.plan)
    if probe is None:
        return {"downtime": None, "note": "no network check in the plan to measure with"}
    port = probe.port
    ctx.ports.prober.wait_answers("prod", probe)
    quiesced = ctx.journal.begun.get("cutover.quiesce", {}).get("ts")
    if not quiesced:
        return {"downtime": None}
    began = dt.datetime.fromisoformat(str(quiesced))
    return {"downtime": round((ctx.now() - began).total_seconds(), 3), "port": port}
