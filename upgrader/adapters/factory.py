"""Pick the adapters behind the ports from the plan: `fake:` URIs get the in-package fakes
(tests), everything else the real libvirt/SSH adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.errors import InfraError
from upgrader.steps.base import Ports

if TYPE_CHECKING:
    from upgrader.plan import Plan


def build_ports(plan: "Plan", run_id: str) -> Ports:
    uri = plan.source.libvirt_uri
    if uri.startswith("fake:"):
        from upgrader.testing import fakes

        return fakes.build(plan)
    try:
        from upgrader.adapters.real import build as build_real
    except ImportError as exc:  # the real adapters land with issue 4
        raise InfraError(
            f"no adapter for {uri} in this version: the libvirt/SSH adapters are not built yet",
            hint="`--dry-run` shows what the run would do; tests use fake:// worlds",
        ) from exc
    return build_real(plan, run_id)
