"""The Hypervisor port on libvirt-python. Works with any libvirt URI: images are handled through
libvirt's storage API (a transient `dir` pool is created for a directory no pool covers), never
by touching paths on the orchestrator, so `qemu+ssh://hv/system` works like `qemu:///system`.

Snapshot model: an external disk-only atomic snapshot freezes each disk as the *base*; prod
continues on a new overlay. The twin gets its own overlay over the same base. Before anything is
committed into a base the backing-chain guard checks that no other image depends on it.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import libvirt
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from upgrader.adapters.libvirt_checkpoints import LibvirtCheckpoints
from upgrader.adapters.libvirt_client_hold import ClientHoldMixin
from upgrader.adapters.libvirt_common import (chain_of, disk_elements, disk_only_flags, esc, libvirt_errors, running_job,
                                              source_file, wait_job)
from upgrader.adapters.libvirt_nics import LibvirtNicsMixin, placement, retarget
from upgrader.errors import InfraError, StepFailed, UnsafeOperation
from upgrader.ports import Checkpoint, Claim, DomainInfo, SnapshotInfo

# The run's claim lives in the domain's <metadata> under this namespace (a name, never fetched).
CLAIM_NS = "urn:x-upgrader:claim:1"
CLAIM_PREFIX = "upgrader"
RECONNECT_WAIT = 90.0  # seconds to wait for a restarted libvirtd
# a connection that answered this recently is used without asking again (each ask is an RPC; the
# takeover in the downtime window makes a dozen calls in well under a second)
CONN_FRESH = 1.0


class LibvirtHypervisor(LibvirtNicsMixin, ClientHoldMixin):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._answered = float("-inf")  # time.monotonic() of the connection's last liveness answer
        self._checkpoints = LibvirtCheckpoints(self)

    # ------------------------------------------------------------------------ connection

    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, re-opened if libvirtd went away (restarted, upgraded): guests keep
        running without it, so a run waits up to RECONNECT_WAIT for it to come back. Asked at
        most once per CONN_FRESH: a daemon restarted in between fails the next call (InfraError),
        as one restarted between the ask and the call always could."""
        if self._conn is not None:
            if time.monotonic() - self._answered < CONN_FRESH:
                return self._conn
            try:
                self._conn.getLibVersion()  # a restarted daemon shows here; isAlive() may not know yet
                self._answered = time.monotonic()
                return self._conn
            except libvirt.libvirtError:
                self._conn = None
                wait = RECONNECT_WAIT
        else:
            wait = 0  # the first connection: a wrong URI fails at once
        for attempt in Retrying(stop=stop_after_delay(wait), wait=wait_exponential(multiplier=0.2, max=3),
                                retry=retry_if_exception_type(InfraError), reraise=True):
            with attempt, libvirt_errors(f"cannot connect to libvirt at {self.uri}"):
                self._conn = libvirt.open(self.uri)
        self._answered = time.monotonic()
        assert self._conn is not None
        return self._conn

    def check(self) -> str:
        with libvirt_errors("libvirt check"):
            version = self.conn.getLibVersion()
            return f"{self.conn.getType()} via libvirt {version // 1000000}.{version // 1000 % 1000}.{version % 1000} at {self.uri}"

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            with libvirt_errors(f"looking up {name}"):
                raise

    def _dom(self, name: str) -> libvirt.virDomain:
        dom = self._lookup(name)
        if dom is None:
            raise StepFailed(f"domain {name} not found at {self.uri}", hint="`virsh -c URI list --all`")
        return dom

    @staticmethod
    def _xml(dom: libvirt.virDomain, inactive: bool = False) -> ET.Element:
        with libvirt_errors(f"reading {dom.name()}'s XML"):
            return ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0))

    # ------------------------------------------------------------------------ inspection

    def domain(self, name: str) -> DomainInfo | None:
        dom = self._lookup(name)
        if dom is None:
            return None
        root = self._xml(dom)
        disks = {d.find("target").get("dev", "?"): source_file(d) or "" for d in disk_elements(root)}  # type: ignore[union-attr]
        nics = placement(root)
        with libvirt_errors(f"state of {name}"):
            running = bool(dom.isActive())
        return DomainInfo(name=name, uuid=dom.UUIDString(), running=running, disks=disks, nics=nics.nics,
                          links=nics.links, memory=_memory_bytes(root))

    def free_memory(self) -> int:
        """MemFree plus buffers and page cache of the hypervisor host (what a new domain can get
        without swapping); libvirt's plain free figure where the node stats are not offered."""
        with libvirt_errors("free memory of the hypervisor"):
            try:
                stats = self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                return int(self.conn.getFreeMemory())
        return sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached")) * 1024

    def free_bytes(self, directory: str) -> int:
        """libvirt's pool figure (statvfs f_bfree on the hypervisor) counts the blocks a
        filesystem reserves for root as free, yet a QEMU running as libvirt's usual non-root user
        (or on a filesystem with a strict reserve) cannot use them. When the hypervisor is this
        machine, the smaller f_bavail is used too."""
        pool = self._pool_for(directory)
        with libvirt_errors(f"free space in {directory}"):
            available = int(pool.info()[3])
        if urlsplit(self.uri).hostname is None and os.path.isdir(directory):
            st = os.statvfs(directory)
            available = min(available, st.f_bavail * st.f_frsize)
        return available

    # ------------------------------------------------------------------------ storage

    def _pool_for(self, directory: str) -> libvirt.virStoragePool:
        directory = os.path.normpath(directory)
        with libvirt_errors(f"storage pool for {directory}"):
            for pool in self.conn.listAllStoragePools():
                path = ET.fromstring(pool.XMLDesc()).findtext("./target/path")
                if path and os.path.normpath(path) == directory:
                    if not pool.isActive():
                        pool.create()
                    pool.refresh()
                    return pool
            name = "upgrader-" + hashlib.sha256(directory.encode()).hexdigest()[:10]
            xml = f"<pool type='dir'><name>{name}</name><target><path>{esc(directory)}</path></target></pool>"
            pool = self.conn.storagePoolCreateXML(xml, 0)  # transient: gone when libvirtd restarts
            pool.refresh()
            return pool

    def _volume(self, path: str) -> libvirt.virStorageVol | None:
        self._pool_for(os.path.dirname(path))
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            with libvirt_errors(f"looking up {path}"):
                raise
        return None

    def _size(self, path: str) -> int:
        vol = self._volume(path)
        if vol is None:
            return 0
        with libvirt_errors(f"size of {path}"):
            return int(vol.info()[2])  # allocation: bytes really used on disk

    def _delete(self, path: str) -> int:
        vol = self._volume(path)
        if vol is None:
            return 0
        size = self._size(path)
        with libvirt_errors(f"deleting {path}"):
            vol.delete(0)
        return size

    def _dependents(self, path: str, *, ignoring: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Every image or domain disk that has `path` as a backing file (the chain guard)."""
        found: set[str] = set()
        with libvirt_errors("scanning backing chains"):
            for dom in self.conn.listAllDomains():
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                    root = ET.fromstring(dom.XMLDesc(flags))
                    for disk in disk_elements(root):
                        chain = chain_of(disk)
                        if path in chain[1:]:
                            found.add(f"{chain[0]} (disk of {dom.name()})")
            for pool in self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                pool.refresh()
                for vol in pool.listAllVolumes():
                    try:
                        backing = ET.fromstring(vol.XMLDesc()).findtext("./backingStore/path")
                    except libvirt.libvirtError:
                        continue
                    if backing and os.path.normpath(backing) == os.path.normpath(path):
                        found.add(vol.path())
        return sorted(f for f in found if f.split(" ")[0] not in ignoring)

    # ------------------------------------------------------------------------ snapshot

    def snapshot(self, domain: str, name: str, directory: str | None) -> SnapshotInfo:
        dom = self._dom(domain)
        root = self._xml(dom)
        disks_xml, overlays, bases = [], {}, {}
        for disk in disk_elements(root):
            target = disk.find("target").get("dev")  # type: ignore[union-attr]
            base = source_file(disk)
            if not base or not target:
                raise StepFailed(f"{domain}: disk {target} is not file-backed; only file disks can be snapshotted here")
            folder = directory or os.path.dirname(base)
            stem = os.path.splitext(os.path.basename(base))[0]
            overlay = os.path.join(folder, f"{stem}.{name}.qcow2")
            disks_xml.append(f"<disk name='{target}' snapshot='external'><driver type='qcow2'/><source file='{esc(overlay)}'/></disk>")
            overlays[target], bases[target] = overlay, base
        xml = f"<domainsnapshot><name>{esc(name)}</name><disks>{''.join(disks_xml)}</disks></domainsnapshot>"
        with libvirt_errors(f"snapshot of {domain}"):
            dom.snapshotCreateXML(xml, disk_only_flags(root, running=bool(dom.isActive())))
        return SnapshotInfo(name=name, overlays=overlays, bases=bases)

    def find_snapshot(self, domain: str, name: str) -> SnapshotInfo | None:
        dom = self._lookup(domain)
        if dom is None:
            return None
        overlays, bases = {}, {}
        for disk in disk_elements(self._xml(dom)):
            target = disk.find("target").get("dev", "")  # type: ignore[union-attr]
            chain = chain_of(disk)
            if not chain or not os.path.basename(chain[0]).endswith(f".{name}.qcow2"):
                return None
            overlays[target] = chain[0]
            bases[target] = chain[1] if len(chain) > 1 else self._backing_of(chain[0])
        return SnapshotInfo(name=name, overlays=overlays, bases=bases) if overlays else None

    def _backing_of(self, path: str) -> str:
        vol = self._volume(path)
        if vol is None:
            return ""
        with libvirt_errors(f"reading {path}"):
            return ET.fromstring(vol.XMLDesc()).findtext("./backingStore/path") or ""

    # ------------------------------------------------------------------------ clone

    def clone(self, source: str, twin: str, snapshot: SnapshotInfo, network: str,
              macs: dict[str, str] | None = None) -> DomainInfo:
        src = self._dom(source)
        root = self._xml(src, inactive=True)
        root.find("name").text = twin  # type: ignore[union-attr]
        uuid = root.find("uuid")
        if uuid is not None:
            uuid.text = str(uuidlib.uuid4())
        for disk in disk_elements(root):
            target = disk.find("target").get("dev", "")  # type: ignore[union-attr]
            base = snapshot.bases.get(target)
            if base is None:
                raise StepFailed(f"{source}: disk {target} was not in snapshot {snapshot.name}")
            overlay = self._create_overlay(base, twin)
            disk.find("source").set("file", overlay)  # type: ignore[union-attr]
            driver = disk.find("driver")
            if driver is not None:
                driver.set("type", "qcow2")
            for backing in disk.findall("backingStore"):
                disk.remove(backing)
        kind = "network" if self._is_network(network) else "bridge"
        for iface in root.findall("./devices/interface"):
            retarget(iface, kind, network)  # isolated segment; same MAC unless mapped (ip_move)
            mac = iface.find("mac")
            if mac is not None and macs and mac.get("address", "").lower() in macs:
                mac.set("address", macs[mac.get("address", "").lower()])
            for tap in iface.findall("target"):
                iface.remove(tap)
        for log in root.iter("log"):  # the twin gets its own console log next to prod's
            if log.get("file"):
                log.set("file", _suffixed(log.get("file", ""), twin))
        for chardev in root.findall("./devices/serial") + root.findall("./devices/console"):
            source = chardev.find("source")
            if chardev.get("type") == "file" and source is not None and source.get("path"):
                source.set("path", _suffixed(source.get("path", ""), twin))
        with libvirt_errors(f"defining {twin}"):
            self.conn.defineXML(ET.tostring(root, encoding="unicode"))
        info = self.domain(twin)
        assert info is not None
        return info

    def _overlay_path(self, base: str, owner: str) -> str:
        stem = os.path.splitext(os.path.basename(base))[0]
        return os.path.join(os.path.dirname(base), f"{stem}.{owner}.qcow2")

    def remove_orphans(self, owner: str, bases: dict[str, str]) -> int:
        """Delete `owner`'s overlays over `bases` that no domain uses — left by a clone that was
        killed between creating its overlay and defining the domain. Returns bytes freed."""
        freed = self._checkpoints.collect(owner, {os.path.dirname(b) for b in bases.values()})  # on the overlay: first
        for base in bases.values():
            path = self._overlay_path(base, owner)
            if self._volume(path) is not None and not self._disk_users(path) and not self._dependents(path):
                freed += self._delete(path)
        return freed

    def _create_overlay(self, base: str, owner: str) -> str:
        self.remove_orphans(owner, {"disk": base})  # an interrupted earlier attempt's leftover
        if self._volume(base) is None:
            raise StepFailed(f"base image {base} not found", hint="was the snapshot taken? `upgrader show HOST`")
        return self._new_overlay(self._overlay_path(base, owner), base)

    def _new_overlay(self, path: str, base: str) -> str:
        """A new qcow2 volume at `path` over `base`, through the storage API."""
        name = os.path.basename(path)
        pool = self._pool_for(os.path.dirname(path))
        base_vol = self._volume(base)
        if base_vol is None:
            raise StepFailed(f"image {base} not found: cannot put an overlay on it")
        with libvirt_errors(f"creating overlay {name}"):
            capacity = base_vol.info()[1]
            base_format = ET.fromstring(base_vol.XMLDesc()).find("./target/format")
            fmt = base_format.get("type", "qcow2") if base_format is not None else "qcow2"
            xml = (
                f"<volume><name>{esc(name)}</name><capacity unit='bytes'>{capacity}</capacity>"
                "<target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>"
                f"<backingStore><path>{esc(base)}</path><format type='{fmt}'/></backingStore></volume>"
            )
            return str(pool.createXML(xml, 0).path())

    # ------------------------------------------------------------------------ lifecycle

    def start(self, name: str) -> None:
        dom = self._dom(name)
        with libvirt_errors(f"starting {name}"):
            if not dom.isActive():
                dom.create()

    def destroy(self, name: str) -> None:
        dom = self._dom(name)
        with libvirt_errors(f"stopping {name}"):
            if dom.isActive():
                dom.destroy()

    def undefine(self, name: str) -> int:
        dom = self._dom(name)
        chains = self.disk_chains(name)
        with libvirt_errors(f"undefining {name}"):
            if dom.isActive():
                raise StepFailed(f"{name} is running; it must be stopped before it is undefined")
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        # its checkpoint overlays first: with them goes what a killed revert or merge left on the chain
        freed = self._checkpoints.collect(name, {os.path.dirname(c[0]) for c in chains if c})
        return freed + self.delete_unused(chains)

    def disk_chains(self, name: str) -> list[list[str]]:
        dom = self._lookup(name)
        if dom is None:
            return []
        return [self._walk(chain_of(disk)[:1]) for disk in disk_elements(self._xml(dom, inactive=True))]

    def _walk(self, chain: list[str]) -> list[str]:
        """The chain from its top image down, read from the images' backing files."""
        chain = list(chain)
        while chain and len(chain) < 64:
            backing = self._backing_of(chain[-1])
            if not backing:
                break
            chain.append(backing)
        return chain

    def delete_unused(self, chains: list[list[str]]) -> int:
        freed = 0
        for chain in chains:
            for path in chain:
                if self._volume(path) is None:
                    continue  # deleted already (a crash halfway through this walk)
                if self._dependents(path) + self._disk_users(path):
                    break  # still needed by another image or domain: keep it and everything below
                freed += self._delete(path)
        return freed

    def _disk_users(self, path: str) -> list[str]:
        with libvirt_errors("scanning domains"):
            return [d.name() for d in self.conn.listAllDomains()
                    if any(path == source_file(x) for x in disk_elements(self._xml(d, inactive=True)))]

    # ------------------------------------------------------------------------ chains

    def merge_back(self, domain: str, snapshot: SnapshotInfo) -> int:
        dom = self._dom(domain)
        freed = 0
        for target, overlay in snapshot.overlays.items():
            base = snapshot.bases[target]
            others = self._dependents(base, ignoring={overlay})
            if others:
                raise UnsafeOperation(
                    f"refusing to commit {overlay} into {base}: {', '.join(others)} still depend(s) on that base; "
                    "committing would corrupt it"
                )
            current = {d.find('target').get('dev'): source_file(d) for d in disk_elements(self._xml(dom))}  # type: ignore[union-attr]
            if current.get(target) == base:  # already merged; a kill after the pivot left the saved definition
                self._sync_config_disk(dom, target, base)  # on the overlay and/or the overlay file: finish both
                if not self._disk_users(overlay) and not self._dependents(overlay):
                    freed += self._delete(overlay)
                continue
            if current.get(target) != overlay:
                raise UnsafeOperation(f"{domain} {target} runs on {current.get(target)}, not on {overlay}; refusing to merge")
            if not dom.isActive():
                raise StepFailed(f"{domain} is not running; merging an offline overlay is not supported",
                                 hint="start it, then `upgrader resume HOST`")
            with libvirt_errors(f"committing {overlay} into {base}"):
                if not running_job(dom, target, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT):
                    dom.blockCommit(target, None, None, 0,
                                    libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
                wait_job(dom, target, pivot=True)
            self._sync_config_disk(dom, target, base)
            freed += self._delete(overlay)
        return freed

    def flatten(self, domain: str) -> None:
        self.merge_checkpoints(domain)  # else their images would be left behind, still on the base
        dom = self._dom(domain)
        for disk in disk_elements(self._xml(dom)):
            target = disk.find("target").get("dev", "")  # type: ignore[union-attr]
            if len(chain_of(disk)) < 2 and not self._backing_of(source_file(disk) or ""):
                continue  # already standalone
            if not dom.isActive():
                raise StepFailed(f"{domain} is not running; flattening offline is not supported")
            with libvirt_errors(f"flattening {domain} {target}"):
                if not running_job(dom, target, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL):
                    dom.blockPull(target, 0, 0)
                wait_job(dom, target, pivot=False)

    # ------------------------------------------------------------------------ checkpoints (libvirt_checkpoints.py)

    def checkpoint(self, domain: str, name: str) -> Checkpoint:
        return self._checkpoints.checkpoint(domain, name)

    def find_checkpoint(self, domain: str, name: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints(domain) if c.name == name), None)

    def checkpoints(self, domain: str) -> list[Checkpoint]:
        return self._checkpoints.list(domain)

    def revert_checkpoint(self, domain: str, name: str) -> int:
        return self._checkpoints.revert(domain, name)

    def merge_checkpoints(self, domain: str) -> int:
        return self._checkpoints.merge(domain)

    # ------------------------------------------------------------------------ claims

    def claim_of(self, domain: str) -> Claim | None:
        dom = self._lookup(domain)
        if dom is None:
            return None
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, CLAIM_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            with libvirt_errors(f"reading {domain}'s claim"):
                raise
        element = ET.fromstring(text)
        return Claim(**{name: element.get(name, "") for name in Claim.__dataclass_fields__})

    def set_claim(self, domain: str, claim: Claim | None) -> None:
        dom = self._dom(domain)
        with libvirt_errors(f"recording the claim on {domain}"):
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
            text = None
            if claim is not None:
                text = ET.tostring(ET.Element("claim", {k: str(v) for k, v in vars(claim).items()}), encoding="unicode")
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, CLAIM_PREFIX if text else None, CLAIM_NS, flags)

    # ------------------------------------------------------------------------ host-level settings

    def autostart(self, name: str) -> bool:
        dom = self._dom(name)
        with libvirt_errors(f"reading {name}'s autostart"):
            return bool(dom.autostart())

    def set_autostart(self, name: str, on: bool) -> None:
        dom = self._dom(name)
        with libvirt_errors(f"setting {name}'s autostart {'on' if on else 'off'}"):
            dom.setAutostart(1 if on else 0)

    def _sync_config_disk(self, dom: libvirt.virDomain, target: str, path: str) -> None:
        """After a pivot the live definition points at `path`; make the persistent one agree."""
        if not dom.isPersistent():
            return
        root = self._xml(dom, inactive=True)
        for disk in disk_elements(root):
            if disk.find("target").get("dev") == target and source_file(disk) != path:  # type: ignore[union-attr]
                disk.find("source").set("file", path)  # type: ignore[union-attr]
                for backing in disk.findall("backingStore"):
                    disk.remove(backing)
                with libvirt_errors(f"updating {dom.name()}'s definition"):
                    self.conn.defineXML(ET.tostring(root, encoding="unicode"))
                return


def _suffixed(path: str, twin: str) -> str:
    folder, base = os.path.split(path)
    return os.path.join(folder, f"{twin}.{base}")


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4}


def _memory_bytes(root: ET.Element) -> int:
    """The memory a domain starts with (<currentMemory>, else <memory>; libvirt's default unit
    is KiB), in bytes; 0 when the XML says neither."""
    for tag in ("currentMemory", "memory"):
        element = root.find(tag)
        if element is not None and (element.text or "").strip().isdigit():
            return int(element.text.strip()) * _UNITS.get(element.get("unit", "KiB").lower(), 1024)  # type: ignore[union-attr]
    return 0
