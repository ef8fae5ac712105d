"""cutover: quiesce prod, final sync (must be complete), take the network over, start services
on the new prod. The clock of the downtime runs from quiesce to resume."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from upgrader.phases import Phase
from upgrader.plan_hold import describe_hold, hold_ports
from upgrader.ports import Probe
from upgrader.steps import takeover
from upgrader.steps.client_hold import CUTOVER_RELEASE_KEY, hold_clients, release_clients
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.sync import run_commands, sync_once

if TYPE_CHECKING:
    from upgrader.plan import Plan


class Cutover:
    phase = Phase.CUTOVER

    def describe(self, plan: "Plan") -> list[str]:
        return [
            describe_hold(plan),
            f"quiesce prod: {'; '.join(plan.sync.quiesce) or '(no commands)'}",
            "final rsync prod -> twin (must exit 0)",
            f"takeover ({plan.takeover.strategy}): {plan.source.domain}'s NICs link-down, "
            f"{plan.twin_name}'s NICs onto {plan.takeover.production_network}"
            + (f"; the new prod claims {plan.takeover.address} with gratuitous ARPs" if plan.takeover.strategy == "ip_move" else ""),
            f"resume services on the new prod: {'; '.join(plan.sync.resume) or '(no commands)'}",
        ] + (["once the service answers: release the client hold"] if hold_ports(plan) else [])

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        started = time.monotonic()
        hold_clients(ctx)  # the last thing before the quiesce: the hold must stay short (< ~0.9 s, SYN retransmit at +1 s)
        run_commands(ctx, "cutover.quiesce", "prod", list(plan.sync.quiesce), "quiesce")
        final = sync_once(ctx, "cutover.final_sync", "prod", "staging", final=True)
        moved = ctx.once(
            "cutover.takeover",
            f"take the network over ({plan.takeover.strategy})",
            lambda _: takeover.takeover(ctx),
            lambda _: {"strategy": plan.takeover.strategy, "probed": True} if takeover.taken_over(ctx) else None,
        )
        claimed = takeover.claim_address(ctx, "cutover.claim_address")
        if claimed:
            moved = {**moved, **claimed}
        run_commands(ctx, "cutover.resume", "prod", list(plan.sync.resume), "resume services")
        back = ctx.once("cutover.service_back", "wait until the service answers at its address", lambda _: service_back(ctx))
        release_clients(ctx, CUTOVER_RELEASE_KEY)
        out: dict[str, Any] = {"final_sync": final, "takeover": moved, "seconds": round(time.monotonic() - started, 3),
                               "observed_downtime": back.get("downtime")}
        return Outcome(out)


def service_port(plan: "Plan") -> tuple[str, int] | None:
    """The first network check after cutover tells which port clients use."""
    for check in plan.verify_checks:
        if check.kind in ("tcp", "smtp", "imap", "http"):
            return check.kind, getattr(check, check.kind).port
    return None


def service_back(ctx: StepContext) -> dict[str, Any]:
    """Observed downtime: from the moment prod was quiesced (its journal `begin`, so a crash in
    between counts too) until the service answers again at its address, from the client side."""
    found = service_port(ctx.plan)
    if found is None:
        return {"downtime": None, "note": "no network check in the plan to measure with"}
    kind, port = found
    ctx.ports.prober.wait_answers("prod", Probe(kind="tcp" if kind == "http" else kind, port=port, timeout=120))
    quiesced = ctx.journal.begun.get("cutover.quiesce", {}).get("ts")
    if not quiesced:
        return {"downtime": None}
    began = dt.datetime.fromisoformat(str(quiesced))
    return {"downtime": round((ctx.now() - began).total_seconds(), 3), "port": port}
