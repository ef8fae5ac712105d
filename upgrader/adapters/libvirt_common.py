"""What the libvirt adapters share: libvirt errors turned into UpgraderErrors, reading disks and
backing chains out of a domain's XML, snapshot flags, and waiting for block jobs."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from typing import Iterator

import libvirt

from upgrader.errors import InfraError, StepFailed

JOB_POLL = 0.2


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we turn them into UpgraderErrors."""


libvirt.registerErrorHandler(_silence, None)

_INFRA_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_CANCELLED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}


@contextmanager
def libvirt_errors(what: str) -> Iterator[None]:
    """libvirt errors become UpgraderErrors by error code, with a hint."""
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        text = f"{what}: {exc.get_error_message() or exc}"
        if code in _INFRA_CODES:
            raise InfraError(text, hint="is libvirtd running and the URI right? `virsh -c URI list` tells") from exc
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            raise StepFailed(text, hint="`virsh -c URI list --all` shows the defined domains") from exc
        if code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED):
            raise StepFailed(text, hint="the domain is not in a state that allows this; check `virsh domstate`") from exc
        if code == libvirt.VIR_ERR_NO_SUPPORT:
            raise StepFailed(text, hint="this hypervisor/libvirt version does not support the operation") from exc
        raise StepFailed(text) from exc


def disk_elements(root: ET.Element) -> list[ET.Element]:
    return [d for d in root.findall("./devices/disk") if d.get("device", "disk") == "disk" and d.find("source") is not None]


def source_file(disk: ET.Element) -> str | None:
    source = disk.find("source")
    return None if source is None else source.get("file")


def chain_of(disk: ET.Element) -> list[str]:
    """Active image first, then its backing files as libvirt reports them."""
    paths: list[str] = []
    node: ET.Element | None = disk
    while node is not None:
        source = node.find("source")
        if source is not None and source.get("file"):
            paths.append(source.get("file", ""))
        node = node.find("backingStore")
    return paths


def disk_only_flags(root: ET.Element, *, running: bool) -> int:
    """An external, disk-only, atomic snapshot without libvirt metadata; quiesced (fsfreeze
    through the guest agent) when the domain has an agent channel and runs."""
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    )
    if running and root.find("./devices/channel/target[@name='org.qemu.guest_agent.0']") is not None:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    return flags


def running_job(dom: libvirt.virDomain, disk: str, kind: int) -> bool:
    """A block job of `kind` still runs on the disk (QEMU keeps it going when the orchestrator
    that started it is killed): it is adopted, not started twice. Another kind is refused."""
    info = dom.blockJobInfo(disk, 0)
    if not info:
        return False
    if info.get("type") != kind:
        raise StepFailed(f"{dom.name()} {disk} has another block job running (type {info.get('type')})",
                         hint="`virsh blockjob DOMAIN DISK --info` shows it; wait for it or abort it, then resume")
    return True


def wait_job(dom: libvirt.virDomain, disk: str, *, pivot: bool, timeout: float = 6 * 3600) -> None:
    """Poll the disk's block job until it ends; with `pivot`, until it is ready, then pivot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = dom.blockJobInfo(disk, 0)
        if not info:
            if pivot:
                raise StepFailed(f"block job on {dom.name()} {disk} ended before it could pivot")
            return
        if pivot and info.get("end", 0) > 0 and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            except libvirt.libvirtError as exc:
                # cur == end before QEMU declared the job ready (seen on the lab under load:
                # "block job ... not ready for pivot yet"): poll on and pivot once it is
                if "not ready for pivot" not in str(exc):
                    raise
                time.sleep(JOB_POLL)
                continue
            while dom.blockJobInfo(disk, 0):
                time.sleep(JOB_POLL)
            return
        time.sleep(JOB_POLL)
    raise StepFailed(f"block job on {dom.name()} {disk} did not finish in {timeout:.0f} s")


def esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")

