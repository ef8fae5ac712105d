"""Checkpoints of a domain (the twin) on libvirt: the checkpoint half of LibvirtHypervisor. The
disk layout and names are upgrader/checkpoints.py's.

* checkpoint: an external disk-only snapshot without libvirt metadata (DISK_ONLY | ATOMIC |
  NO_METADATA), running or shut off: libvirt makes the overlays and switches the disks at once.
* revert (shut off only): a new empty overlay over each frozen image (storage API), then the
  persistent definition switched to them in one defineXML, then the images above deleted.
* merge: an active block commit down to the image clone made, with pivot, on a running domain
  (a job still running from a killed process is adopted); `qemu-img commit` on a shut-off one
  (local hypervisors only), then the definition switched.

Every step is ordered so that a process killed anywhere leaves the domain on a complete chain:
the switch comes before any deletion, and what lies above the switched-to images is only
recognised afterwards as a checkpoint overlay of the domain that no domain and no image uses
(`collect`) — so calling again finishes the job, and teardown (undefine, remove_orphans) finds
whatever a killed call left.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import libvirt

from upgrader.adapters.libvirt_common import (disk_elements, disk_only_flags, esc, libvirt_errors, running_job, source_file,
                                              wait_job)
from upgrader.checkpoints import above, check_name, in_chains, lowest, overlay_path, parse
from upgrader.errors import StepFailed, UnsafeOperation
from upgrader.ports import Checkpoint

if TYPE_CHECKING:
    from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor

COMMIT_TIMEOUT = 6 * 3600


class LibvirtCheckpoints:
    def __init__(self, hv: "LibvirtHypervisor") -> None:
        self.hv = hv

    def chains(self, dom: libvirt.virDomain, *, files_only: bool = False) -> dict[str, list[str]]:
        """Each file disk's images, active first: the live definition's when running, else the
        persistent one's; the backing files read from the images. `files_only`: refuse a disk
        that is not a file (a checkpoint could not cover it)."""
        chains = {}
        for disk in disk_elements(self.hv._xml(dom)):
            target = disk.find("target").get("dev", "")  # type: ignore[union-attr]
            top = source_file(disk)
            if top:
                chains[target] = self.hv._walk([top])
            elif files_only:
                raise StepFailed(f"{dom.name()}: disk {target} is not file-backed; checkpoints need file disks")
        return chains

    def list(self, domain: str) -> list[Checkpoint]:
        dom = self.hv._lookup(domain)
        return [] if dom is None else in_chains(domain, self.chains(dom), self.hv._size)

    def checkpoint(self, domain: str, name: str) -> Checkpoint:
        check_name(name)
        dom = self.hv._dom(domain)
        chains = self.chains(dom, files_only=True)
        found = _named(in_chains(domain, chains, self.hv._size), name)
        if found is not None:
            return found
        self.collect(domain, _folders(chains))  # a killed attempt's overlays, if libvirt left any
        disks_xml = []
        for target, chain in chains.items():
            overlay = overlay_path(os.path.dirname(chain[0]), domain, target, name)
            if self.hv._volume(overlay) is not None:
                raise UnsafeOperation(f"{overlay} exists and is in use; refusing to take checkpoint {name} of {domain}")
            disks_xml.append(f"<disk name='{esc(target)}' snapshot='external'><driver type='qcow2'/>"
                             f"<source file='{esc(overlay)}'/></disk>")
        xml = f"<domainsnapshot><name>ckpt-{esc(name)}</name><disks>{''.join(disks_xml)}</disks></domainsnapshot>"
        with libvirt_errors(f"checkpoint {name} of {domain}"):
            dom.snapshotCreateXML(xml, disk_only_flags(self.hv._xml(dom), running=bool(dom.isActive())))
        found = _named(self.list(domain), name)
        if found is None:
            raise StepFailed(f"checkpoint {name} of {domain} is not in its disks' chains after the snapshot")
        return found

    def revert(self, domain: str, name: str) -> int:
        check_name(name)
        dom = self.hv._dom(domain)
        with libvirt_errors(f"state of {domain}"):
            running = bool(dom.isActive())
        if running:
            raise UnsafeOperation(f"{domain} is running; a checkpoint is restored only while it is shut off",
                                  hint=f"stop it first (`virsh -c URI shutdown {domain}`, or `destroy`), then again")
        chains = self.chains(dom)
        point = _named(in_chains(domain, chains, self.hv._size), name)
        if point is None:
            have = ", ".join(c.name for c in in_chains(domain, chains, self.hv._size)) or "none"
            raise StepFailed(f"{domain} has no checkpoint {name}", hint=f"its checkpoints: {have}")
        folders = _folders(chains)
        self.collect(domain, folders)  # the overlays of a revert killed before its switch
        fresh = {}
        for target, chain in chains.items():
            frozen = point.disks[target]
            top = above(domain, chain, frozen)[-1]  # the checkpoint's own overlay (or a revert's)
            generation = parse(top, domain)[2] + 1  # type: ignore[index]
            path = overlay_path(os.path.dirname(top), domain, target, name, generation)
            if self.hv._volume(path) is not None:
                raise UnsafeOperation(f"{path} exists and is in use; refusing to revert {domain}")
            fresh[target] = self.hv._new_overlay(path, frozen)
        self._switch(dom, fresh)
        return self.collect(domain, folders)

    def merge(self, domain: str) -> int:
        dom = self.hv._dom(domain)
        chains = self.chains(dom)
        with libvirt_errors(f"state of {domain}"):
            running = bool(dom.isActive())
        offline = {}
        for target, chain in chains.items():
            index = lowest(domain, chain)
            if index is None:
                if running and parse(self._persistent_source(dom, target), domain) is not None:
                    self.hv._sync_config_disk(dom, target, chain[0])  # pivoted by a killed call, not yet saved
                continue
            base = chain[index + 1]
            above(domain, chain, base)  # only checkpoint overlays are folded
            if running:
                with libvirt_errors(f"committing {domain} {target}'s checkpoints into {base}"):
                    if not running_job(dom, target, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT):
                        dom.blockCommit(target, base, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
                    wait_job(dom, target, pivot=True)
                self.hv._sync_config_disk(dom, target, base)
            else:
                self._commit_offline(domain, chain[0], base)
                offline[target] = base
        if offline:
            self._switch(dom, offline)
        return self.collect(domain, _folders(chains))

    def collect(self, domain: str, folders: set[str]) -> int:
        """Delete `domain`'s checkpoint overlays in `folders` that no domain (live or persistent
        definition) and no image uses, top down. Returns bytes freed."""
        freed = 0
        for _ in range(64):
            unused = [p for p in self._files(domain, folders) if not self._in_use(p)]
            if not unused:
                break
            for path in unused:
                freed += self.hv._delete(path)
        return freed

    def _files(self, domain: str, folders: set[str]) -> list[str]:
        found = []
        for folder in sorted(folders):
            pool = self.hv._pool_for(folder)
            with libvirt_errors(f"listing {folder}"):
                paths = [vol.path() for vol in pool.listAllVolumes()]
            found += [p for p in paths if os.path.dirname(p) == folder and parse(p, domain) is not None]
        return found

    def _in_use(self, path: str) -> bool:
        if self.hv._dependents(path):
            return True
        with libvirt_errors("scanning domains"):
            for dom in self.hv.conn.listAllDomains():
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                    if any(source_file(d) == path for d in disk_elements(ET.fromstring(dom.XMLDesc(flags)))):
                        return True
        return False

    def _persistent_source(self, dom: libvirt.virDomain, target: str) -> str:
        disks = disk_elements(self.hv._xml(dom, inactive=True))
        return next((source_file(d) or "" for d in disks if d.find("target").get("dev") == target), "")  # type: ignore[union-attr]

    def _switch(self, dom: libvirt.virDomain, paths: dict[str, str]) -> None:
        """Point the persistent definition's disks at `paths` (target -> image), all in one define."""
        root = self.hv._xml(dom, inactive=True)
        for disk in disk_elements(root):
            target = disk.find("target").get("dev", "")  # type: ignore[union-attr]
            if target in paths:
                disk.find("source").set("file", paths[target])  # type: ignore[union-attr]
                driver = disk.find("driver")
                if driver is not None:
                    driver.set("type", "qcow2")
                for backing in disk.findall("backingStore"):
                    disk.remove(backing)
        with libvirt_errors(f"updating {dom.name()}'s definition"):
            self.hv.conn.defineXML(ET.tostring(root, encoding="unicode"))

    def _commit_offline(self, domain: str, top: str, base: str) -> None:
        """`qemu-img commit` of everything above `base` into it; run again after a kill, it writes
        the same data again (the images above are deleted only after the switch)."""
        if urlsplit(self.hv.uri).hostname is not None:
            raise StepFailed(f"{domain} is shut off and its hypervisor is remote: its checkpoints can be merged only "
                             "while it runs", hint=f"start {domain}, then merge again (a block commit)")
        try:
            done = subprocess.run(["qemu-img", "commit", "-q", "-b", base, top], capture_output=True, text=True,
                                  timeout=COMMIT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepFailed(f"qemu-img commit of {top} into {base}: {exc}") from exc
        if done.returncode != 0:
            raise StepFailed(f"qemu-img commit of {top} into {base} failed: {done.stderr.strip()[-500:]}",
                             hint="a commit left running by a killed process holds the images' lock: "
                                  "`pgrep -a qemu-img` shows it; wait for it, then merge again")


def _named(found: list[Checkpoint], name: str) -> Checkpoint | None:
    return next((c for c in found if c.name == name), None)


def _folders(chains: dict[str, list[str]]) -> set[str]:
    return {os.path.dirname(chain[0]) for chain in chains.values() if chain}
