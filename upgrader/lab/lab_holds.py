"""The client hold as the lab sees it (part of `Lab`): what is held on a domain (live filterrefs,
libvirt's nwfilter bindings, the upgrader-hold-* filters, the firewall rules libvirt wrote in the
lab's namespace) and a probe client in the client namespace (upgrader/lab/holdprobe.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from upgrader.lab import config as C
from upgrader.lab.errors import LabError
from upgrader.lab.proc import run
from upgrader.ports import HOLD_PREFIX



@dataclass(frozen=True)
class HoldState:
    filterrefs: dict[str, str]  # mac -> filter of the live XML's <filterref> (any filter)
    taps: dict[str, str]  # mac -> target dev (vnetN)
    bindings: list[tuple[str, str]]  # (port dev, filter) of libvirt's nwfilter bindings on those taps
    filters: list[str]  # defined upgrader-hold-* nwfilters
    rules: list[str]  # `iptables -S` / `ip6tables -S` lines in the lab namespace naming those taps

    @property
    def clear(self) -> bool:
        """Nothing of a hold is left: no filterref, binding, hold filter or rule."""
        return not (self.filterrefs or self.bindings or self.filters or self.rules)


def firewall_rules(taps: list[str]) -> list[str]:
    """The iptables and ip6tables rules (`-S` form) in libvirtd's namespace that name a tap."""
    lines: list[str] = []
    for tool in ("iptables", "ip6tables"):
        result = run(["ip", "netns", "exec", C.NS_LAB, tool, "-w", "-S"], check=False)
        if not result.ok:
            raise LabError(f"{tool} -S in {C.NS_LAB} failed: {result.stderr.strip()}",
                           hint="install the iptables package (tools/bootstrap.sh)")
        lines += [f"{tool} {line}" for line in result.stdout.splitlines()
                  if any(re.search(rf"{re.escape(t)}\b", line) for t in taps)]
    return lines


class HoldProbe(AbstractContextManager["HoldProbe"]):
    """upgrader.lab.holdprobe in the client namespace: one SMTP connection opened at once, then
    `connect(timeout)` (a new one), `noop()` (on the first)."""

    def __init__(self, host: str = C.SERVICE_IP, port: int = 25) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", C.NS_CLIENT, sys.executable, "-m",
                                      "upgrader.lab.holdprobe", "--host", host, "--port", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.banner = str(self._answer().get("banner", ""))

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise LabError(f"the hold probe ended (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise LabError(f"hold probe: {answer['error']}")
        return answer

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def connect(self, timeout: float = 0.3) -> str:
        """A new connection: "ok", "timeout" (dropped, as under a hold), "refused" or "error: ..."."""
        return str(self._ask(f"connect {timeout}")["connect"])

    def noop(self) -> str:
        """NOOP on the connection opened at the start; the server's reply line."""
        return str(self._ask("noop")["reply"])

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
            except (LabError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LabHolds:
    """Mixed into `Lab`, which provides libvirt_conn."""

    if TYPE_CHECKING:
        def libvirt_conn(self) -> AbstractContextManager[Any]: ...

    def client_holds(self, domain: str = C.MAILHOST) -> HoldState:
        """What is held on `domain` (running): filterrefs, bindings, upgrader-hold-* filters, rules."""
        with self.libvirt_conn() as conn:
            root = ET.fromstring(conn.lookupByName(domain).XMLDesc(0))
            refs: dict[str, str] = {}
            taps: dict[str, str] = {}
            for iface in root.findall("./devices/interface"):
                mac, target, ref = iface.find("mac"), iface.find("target"), iface.find("filterref")
                if mac is None:
                    continue
                address = mac.get("address", "").lower()
                if target is not None:
                    taps[address] = target.get("dev", "")
                if ref is not None:
                    refs[address] = ref.get("filter", "")
            bindings = sorted((b.portDev(), b.filterName()) for b in conn.listAllNWFilterBindings()
                              if b.portDev() in taps.values())
            filters = sorted(n for n in (f.name() for f in conn.listAllNWFilters()) if n.startswith(HOLD_PREFIX))
        return HoldState(refs, taps, bindings, filters, firewall_rules([t for t in taps.values() if t]))

    def hold_probe(self, host: str = C.SERVICE_IP, port: int = 25) -> HoldProbe:
        return HoldProbe(host, port)
