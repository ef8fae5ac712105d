"""How the cutover (and the twin's rehearsal of it) tells that the service is back: the first
network check of the plan's `verify:` list that is about the VM itself (a check with its own
`host:` looks at another machine), asked the way the check asks — an SMTP/IMAP banner, an HTTP
status line — never a bare "the connect did not fail": through a ProxyCommand a connect that
hangs (a held SYN, an address in the middle of its move) looks the same as one that worked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.plan_hold import prod_network_checks
from upgrader.ports import Probe

if TYPE_CHECKING:
    from upgrader.plan import Plan


def service_probe(plan: "Plan", timeout: float = 120.0) -> Probe | None:
    """The probe for the service's port, or None when `verify` has no such check. Banners are
    matched by their protocol's default pattern (the check's own `expect` is verify's business);
    HTTP asks for the check's path and status."""
    checks = prod_network_checks(plan)
    if not checks:
        return None
    kind, spec = checks[0]
    if kind == "http":
        return Probe(kind="http", port=spec.port, path=spec.path, status=spec.status, timeout=timeout)
    return Probe(kind=kind, port=spec.port, timeout=timeout)
