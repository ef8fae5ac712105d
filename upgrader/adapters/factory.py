"""Pick the adapters behind the ports from the plan: `fake:` URIs get the in-package fakes
(tests), everything else the real libvirt/SSH adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.steps.base import Ports

if TYPE_CHECKING:
    from upgrader.plan import Plan


def build_ports(plan: "Plan", run_id: str) -> Ports:
    uri = plan.source.libvirt_uri
    if uri.startswith("fake:"):
        from upgrader.testing import fakes

        ports = fakes.build(plan, run_id)
    else:
        from upgrader.adapters.real import build as build_real  # imports libvirt: only when needed

        ports = build_real(plan, run_id)
    if plan.announce is not None:  # customers are told by mail, also in tests (a real SMTP server)
        from upgrader.notify import SmtpNotifier, SmtpSettings

        ports.notifier = SmtpNotifier(SmtpSettings.from_env())
    if plan.operator is not None:  # operators: mail through the same SMTP settings, and the webhook
        from upgrader.notify.operator import channels_from_plan

        ports.operator = channels_from_plan(plan)
    return ports
