"""Network namespaces, bridges and veths of the lab (all named upg*), via iproute2.

Topology (every box is a namespace the lab creates; the host namespace gets nothing):

    upg-lab:       upgprod0 (bridge)  <- mailhost's tap, upgpa0, upgpc0
                   upgstg0  (bridge)  <- twins' taps, upgsa0
    upg-acc-prod:  upgpa1 192.0.2.250/24   (SSH ProxyCommand runs here)
    upg-acc-stg:   upgsa1 192.0.2.250/24   (same address, other segment)
    upg-client:    upgpc1 192.0.2.100/24   (SMTP traffic probes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from upgrader.lab import config as C
from upgrader.lab.proc import run


def ns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def list_lab_namespaces() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    names = [entry.get("name", "") for entry in json.loads(out or "[]")]
    return sorted(n for n in names if n.startswith(C.PREFIX))


def link_exists(name: str, ns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", ns] if ns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).ok


def list_links(ns: str | None = None) -> list[dict[str, object]]:
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-j", "link", "show"]
    result = run(argv, check=False)
    return json.loads(result.stdout or "[]") if result.ok else []


def _ip(ns: str, *args: str) -> None:
    run(["ip", "-n", ns, *args])


def _sysctl(ns: str, key: str, value: str) -> None:
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"], check=False)


def ensure_namespace(name: str) -> None:
    if not ns_exists(name):
        run(["ip", "netns", "add", name])
    _ip(name, "link", "set", "lo", "up")
    # IPv6 off: no router solicitations / DAD noise; the lab is IPv4 only
    _sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
    _sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")


def ensure_bridge(name: str) -> None:
    if not link_exists(name, C.NS_LAB):
        _ip(C.NS_LAB, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    _ip(C.NS_LAB, "link", "set", name, "up")


def ensure_veth(bridge_side: str, bridge: str, ns_side: str, ns: str, address: str, mac: str | None = None) -> None:
    """A veth pair: bridge_side enslaved to `bridge` in upg-lab, ns_side in `ns` with `address`
    (and `mac`, if given)."""
    if link_exists(bridge_side, C.NS_LAB) and not link_exists(ns_side, ns):
        _ip(C.NS_LAB, "link", "del", bridge_side)  # half a pair: start over
    if not link_exists(bridge_side, C.NS_LAB):
        if link_exists(ns_side, ns):
            _ip(ns, "link", "del", ns_side)
        _ip(C.NS_LAB, "link", "add", bridge_side, "type", "veth", "peer", "name", ns_side, "netns", ns)
    _ip(C.NS_LAB, "link", "set", bridge_side, "master", bridge, "up")
    cidr = f"{address}/{C.SUBNET_PREFIXLEN}"
    addrs = run(["ip", "-n", ns, "-j", "addr", "show", "dev", ns_side]).stdout
    if f'"{address}"' not in addrs:
        _ip(ns, "addr", "add", cidr, "dev", ns_side)
    if mac:
        _ip(ns, "link", "set", ns_side, "address", mac)
    _ip(ns, "link", "set", ns_side, "up")


def setup() -> None:
    """Create (or complete) the lab's namespaces, bridges and veths. Idempotent."""
    for ns in C.NAMESPACES:
        ensure_namespace(ns)
    for seg in C.SEGMENTS.values():
        ensure_bridge(seg.bridge)
    # bridged frames through iptables/ip6tables: the rules libvirt's nwfilter writes for a client
    # hold (issue 14) match on the bridge port. Per namespace since Linux 5.3 (1 by default there)
    _sysctl(C.NS_LAB, "net.bridge.bridge-nf-call-iptables", "1")
    _sysctl(C.NS_LAB, "net.bridge.bridge-nf-call-ip6tables", "1")
    for seg in C.SEGMENTS.values():
        # one address and one MAC on both segments, like a router: the twin's neighbour entry for
        # its SSH peer learnt on staging stays right after it moves to prod (else ~30 s of silence)
        ensure_veth(seg.veth_bridge_side, seg.bridge, seg.veth_ns_side, seg.access_ns, C.ACCESS_IP, C.ACCESS_MAC)
    ensure_veth(C.CLIENT_VETH_BRIDGE_SIDE, C.BR_PROD, C.CLIENT_VETH_NS_SIDE, C.NS_CLIENT, C.CLIENT_IP)


def teardown() -> list[str]:
    """Delete the lab's namespaces (their links go with them). Returns what was removed."""
    removed = []
    for ns in list_lab_namespaces():
        if ns in C.NAMESPACES or ns.startswith(C.PREFIX + "-"):
            run(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    # links named upg* in the host namespace should never exist; remove strays from older labs
    for link in list_links():
        name = str(link.get("ifname", ""))
        if name.startswith(C.PREFIX):
            run(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class NetState:
    namespaces: list[str]
    bridges: dict[str, bool]
    links_ok: bool


def state() -> NetState:
    namespaces = list_lab_namespaces()
    bridges = {b: (C.NS_LAB in namespaces and link_exists(b, C.NS_LAB)) for b in (C.BR_PROD, C.BR_STG)}
    links_ok = all(bridges.values()) and all(ns in namespaces for ns in C.NAMESPACES)
    if links_ok:
        pairs = [(s.veth_ns_side, s.access_ns) for s in C.SEGMENTS.values()]
        pairs.append((C.CLIENT_VETH_NS_SIDE, C.NS_CLIENT))
        links_ok = all(link_exists(name, ns) for name, ns in pairs)
    return NetState(namespaces, bridges, links_ok)
