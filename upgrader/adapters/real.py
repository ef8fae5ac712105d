"""The real adapters behind the ports: libvirt, fabric (SSH), rsync through SSH forwards, and
network probes over the plan's declared paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.adapters.ansible_runner import AnsibleRunner
from upgrader.adapters.fabric_shell import FabricShells
from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.adapters.net_prober import NetProber
from upgrader.adapters.rsync_syncer import RsyncSyncer
from upgrader.steps.base import Ports

if TYPE_CHECKING:
    from upgrader.plan import Plan


def build(plan: "Plan", run_id: str) -> Ports:
    shells = FabricShells(plan)
    return Ports(LibvirtHypervisor(plan.source.libvirt_uri), shells, RsyncSyncer(shells, run_id), NetProber(plan),
                 playbooks=AnsibleRunner(plan, run_id))
