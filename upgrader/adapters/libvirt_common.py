"""What the libvirt adapters share: libvirt errors turned into UpgraderErrors, and reading disks
and backing chains out of a domain's XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import contextmanager
from typing import Iterator

import libvirt

from upgrader.errors import InfraError, StepFailed


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


def esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")

