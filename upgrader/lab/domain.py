"""libvirt domain XML for LabOS guests (TCG), and small helpers to read domains back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from upgrader.lab import config as C


@dataclass(frozen=True)
class GuestSpec:
    name: str
    disk: Path
    kernel: Path
    initrd: Path
    bridge: str
    mac: str
    ip: str
    console_log: Path
    memory_mib: int = C.GUEST_MEMORY_MIB
    vcpus: int = 1


def cmdline(ip: str) -> str:
    return (f"root=/dev/vda rw rootfstype=ext4 init=/sbin/init console=ttyS0,115200 "
            f"net.ifnames=0 panic=-1 quiet labip={ip}/{C.SUBNET_PREFIXLEN}")


def domain_xml(spec: GuestSpec) -> str:
    a = quoteattr
    return f"""<domain type='qemu'>
  <name>{escape(spec.name)}</name>
  <description>upgrader lab guest (LabOS)</description>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(spec.kernel))}</kernel>
    <initrd>{escape(str(spec.initrd))}</initrd>
    <cmdline>{escape(cmdline(spec.ip))}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={a(str(spec.disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address={a(spec.mac)}/>
      <source bridge={a(spec.bridge)}/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={a(str(spec.console_log))} append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@dataclass(frozen=True)
class DomainInfo:
    name: str
    bridges: list[str]
    macs: list[str]
    disks: list[str]
    console_log: str | None
    ip: str | None  # from `labip=` on the kernel command line

    @property
    def segment(self) -> C.Segment | None:
        for seg, net in C.SEGMENTS.items():
            if net.bridge in self.bridges:
                return seg
        return None


def parse(xml: str) -> DomainInfo:
    root = ET.fromstring(xml)
    bridges, macs, disks = [], [], []
    for iface in root.findall("./devices/interface"):
        src = iface.find("source")
        if src is not None and src.get("bridge"):
            bridges.append(src.get("bridge", ""))
        mac = iface.find("mac")
        if mac is not None:
            macs.append(mac.get("address", ""))
    for disk in root.findall("./devices/disk"):
        src = disk.find("source")
        if src is not None and src.get("file"):
            disks.append(src.get("file", ""))
    console = None
    serial_src = root.find("./devices/serial/source")
    if serial_src is not None:
        console = serial_src.get("path")
    ip = None
    cmd = root.findtext("./os/cmdline") or ""
    for word in cmd.split():
        if word.startswith("labip="):
            ip = word.removeprefix("labip=").split("/")[0]
    return DomainInfo(root.findtext("name") or "", bridges, macs, disks, console, ip)
