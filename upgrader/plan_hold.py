"""The plan's client hold (`takeover.hold`): which TCP ports of prod get their new connections
held (SYNs dropped on the hypervisor, clients retransmit) from just before the quiesce until the
new prod answers, and the checks that refuse a hold that would hurt.

    hold_ports(plan)        # -> (25, 143): takeover.hold, or the ports of the verify checks
    check_hold(hold, 22)    # PlanCheckError at [i] for the SSH port, or more than MAX_HOLD_PORTS

`takeover.hold` left out means the ports of the plan's post-cutover network checks (tcp, smtp,
imap, http) that have no `host:` of their own (a check against another machine is not prod's
port), without prod's SSH port; `[]` turns the hold off. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from upgrader.plan_checks import PlanCheckError

if TYPE_CHECKING:
    from upgrader.plan import Plan

MAX_HOLD_PORTS = 32  # one drop rule per port on the hypervisor (IPv4), instantiated just before the quiesce
NETWORK_CHECKS = ("tcp", "smtp", "imap", "http")


def prod_network_checks(plan: "Plan") -> list[tuple[str, Any]]:
    """(kind, spec) of the verify checks that reach prod's own ports (network kinds, no `host:`
    of their own), in plan order: the hold's default ports, and the service-back probe."""
    found = [(check.kind, getattr(check, check.kind)) for check in plan.verify_checks if check.kind in NETWORK_CHECKS]
    return [(kind, spec) for kind, spec in found if spec.host is None]


def default_ports(plan: "Plan") -> tuple[int, ...]:
    """The ports of the verify checks that reach prod itself (no `host:`), sorted, without prod's
    SSH port (the orchestrator's own reconnects must never be held)."""
    ports = {int(spec.port) for _, spec in prod_network_checks(plan)}
    ports.discard(plan.ssh.prod.port)
    return tuple(sorted(ports))


def hold_ports(plan: "Plan") -> tuple[int, ...]:
    """The ports whose new connections the cutover holds, sorted and unique; () = no hold."""
    if plan.takeover.hold is None:
        return default_ports(plan)
    return tuple(sorted(set(plan.takeover.hold)))


def check_hold(hold: Sequence[int], ssh_port: int) -> None:
    """Refuse prod's SSH port (the orchestrator reconnects to prod during the cutover: held, it
    would wait for its own hold) and more than MAX_HOLD_PORTS ports. PlanCheckError `at` the item."""
    for i, port in enumerate(hold):
        if port == ssh_port:
            raise PlanCheckError(
                f"port {port} is prod's SSH port (ssh.prod.port): holding it would hold upgrader's own "
                "connections to prod during the cutover; leave it out of takeover.hold", at=(i,))
    distinct = sorted(set(hold))
    if len(distinct) > MAX_HOLD_PORTS:
        raise PlanCheckError(
            f"{len(distinct)} ports, at most {MAX_HOLD_PORTS}: each is a firewall rule the hypervisor sets up "
            "just before the quiesce; hold the ports clients connect to (e.g. [25, 143]), or [] for no hold")


def describe_hold(plan: "Plan") -> str:
    """One line for --dry-run."""
    ports = hold_ports(plan)
    if not ports:
        return "no client hold (takeover.hold: [] or no network check to take the ports from)"
    return (f"hold new connections to {plan.source.domain}:{', '.join(map(str, ports))} (SYN dropped on the "
            "hypervisor, clients retransmit) from just before the quiesce until the new prod answers")
