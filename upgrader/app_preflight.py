"""`upgrader preflight HOST --plan FILE`: every check `start` makes before it creates a run
(preflight_checks.py), plus what `start` refuses first - an unfinished run of the host, another
run's claim on the VM - all read-only: no run, no lock, no claim, no state written."""

from __future__ import annotations

from pathlib import Path

from upgrader.app import Context, StartOptions, _busy
from upgrader.errors import BusyError, InputError
from upgrader.plan import Plan, load_plan, resolve_plan_path
from upgrader.preflight_checks import PreflightReport, run_checks
from upgrader.steps.base import Ports
from upgrader.steps.identity import refuse_foreign
from upgrader.unstarted import stale_claim

__all__ = ["preflight"]


def preflight(ctx: Context, options: StartOptions) -> tuple[Path, Plan, PreflightReport]:
    path = resolve_plan_path(options.plan)
    plan = load_plan(path)  # not refused for its window here: the window is one of the checks
    ports = ctx.ports_factory(plan, "preflight")
    report = PreflightReport()
    if ports.operator is not None:
        try:
            ports.operator.check()
        except InputError as exc:
            report.add("operator channels", exc.message)
    active = ctx.store.active_run(options.host)
    report.add("no unfinished run", None if active is None else _busy(ctx, options.host, active).message,
               f'host "{options.host}" has none in {ctx.store.root}')
    report.checks.extend(run_checks(plan, ports, ctx.now()).checks)
    _claim(ctx, plan, ports, report)
    return path, plan, report


def _claim(ctx: Context, plan: Plan, ports: Ports, report: PreflightReport) -> None:
    """Would `start` be refused for another run's claim on the VM? A claim that a finished run of
    this state dir left on this machine is removed by start: not an inhibitor."""
    if not all(c.ok for c in report.checks if c.name in ("libvirt", "domain")):
        return
    hv, domain = ports.hypervisor, plan.source.domain
    try:
        refuse_foreign(hv, domain, run_id="")
    except BusyError as exc:
        claim = hv.claim_of(domain)
        stale = claim is not None and stale_claim(ctx.store, claim)
        report.add("VM not claimed", None if stale else exc.message, "claimed by a finished run: start removes that claim")
        return
    report.add("VM not claimed", None, f"no run's claim on {domain}")
