"""cutover: open the sync session (key, tunnel), quiesce prod, final sync through it (must be
complete), revoke its key on prod, take the network over, start services on the new prod, and
once the service is back sweep the session's key pair off the twin. The clock of the downtime
runs from quiesce to resume; nothing of the sync is set up inside it (steps/sync_session.py).

The key line is revoked before the takeover, not after service_back: it is authorised on the old
VM, which is off the production segment once the takeover began (its link is down, and the role
"prod" reaches the twin), so it could no longer be removed from there. Only that one command runs
in the window: the tunnel goes with the connections at the takeover, the key pair later."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from upgrader.phases import Phase
from upgrader.plan_hold import describe_hold, hold_ports
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.client_hold import CUTOVER_RELEASE_KEY, hold_clients, release_clients
from upgrader.steps.service_probe import service_probe
from upgrader.steps.sync import run_commands
from upgrader.steps.sync_session import (OPEN_KEY, REVOKE_KEY, SWEEP_KEY, OpenSync, open_session, reopen_key,
                                         revoke_session, session_pass, sweep_session)

if TYPE_CHECKING:
    from upgrader.plan import Plan


class Cutover:
    phase = Phase.CUTOVER

    def describe(self, plan: "Plan") -> list[str]:
        return [
            "open the sync prod -> twin: its key authorised on prod, the tunnel up (before the quiesce)",
            describe_hold(plan),
            f"quiesce prod: {'; '.join(plan.sync.quiesce) or '(no commands)'}",
            "final rsync prod -> twin through the open sync (must exit 0), then its key revoked on prod (one command)",
            f"takeover ({plan.takeover.strategy}): {plan.source.domain}'s NICs link-down, "
            f"{plan.twin_name}'s NICs onto {plan.takeover.production_network}"
            + (f"; the new prod claims {plan.takeover.address} with gratuitous ARPs" if plan.takeover.strategy == "ip_move" else ""),
            f"resume services on the new prod: {'; '.join(plan.sync.resume) or '(no commands)'}",
            "once the service answers: persist the takeover in both VMs' definitions (the window changed the running VMs only)",
        ] + (["release the client hold"] if hold_ports(plan) else []) + ["the sync's key pair removed from the new prod"]

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        held = OpenSync("prod", "staging")
        try:
            open_session(ctx, OPEN_KEY, held)
            if held.session is None and "cutover.quiesce" not in ctx.journal.begun:
                open_session(ctx, reopen_key(ctx), held)  # resumed after the open: set up again outside the window
            hold_clients(ctx)  # the last thing before the quiesce: the hold must stay short (< ~0.9 s, SYN retransmit at +1 s)
            started = time.monotonic()
            run_commands(ctx, "cutover.quiesce", "prod", list(plan.sync.quiesce), "quiesce")
            final = session_pass(ctx, "cutover.final_sync", held, final=True)
            revoke_session(ctx, REVOKE_KEY, held)
        except BaseException:
            held.drop()  # bounded, never raising; the key counts as in doubt until sync_close is done
            raise
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
        release_clients(ctx, CUTOVER_RELEASE_KEY)
        sweep_session(ctx, SWEEP_KEY, "prod")  # the twin now
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
