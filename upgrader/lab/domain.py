"""libvirt domain XML for the lab's guests (TCG), and small helpers to read domains back.

Two boot kinds: LabOS boots the host's kernel + initrd (<kernel>, with `labip=` on its command
line); the Debian guest boots its own disk through GRUB (<boot dev='hd'/>). Both carry the
guest kind and service IP in <metadata> (what DomainInfo.ip reads; `labip=` stays a fallback
for domains defined before)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from upgrader.lab import config as C


METADATA_NS = "https://upgrader.invalid/lab"


@dataclass(frozen=True)
class GuestSpec:
    name: str
    disk: Path
    kernel: Path | None  # None: boot from the disk (GRUB in its MBR)
    initrd: Path | None
    bridge: str
    mac: str
    ip: str
    console_log: Path
    memory_mib: int = C.GUEST_MEMORY_MIB
    vcpus: int = 1
    guest: str = "labos"  # the lab's guest kind (config.GuestKind)
    tb_cache_mib: int | None = None  # TCG translation cache (QEMU's default, 1 GiB, is host RSS)


def cmdline(ip: str) -> str:
    return (f"root=/dev/vda rw rootfstype=ext4 init=/sbin/init console=ttyS0,115200 "
            f"net.ifnames=0 panic=-1 quiet labip={ip}/{C.SUBNET_PREFIXLEN}")


def _os_xml(spec: GuestSpec) -> str:
    if spec.kernel is None:
        return """  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>"""
    return f"""  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(spec.kernel))}</kernel>
    <initrd>{escape(str(spec.initrd))}</initrd>
    <cmdline>{escape(cmdline(spec.ip))}</cmdline>
  </os>"""


def _tcg_xml(spec: GuestSpec) -> str:
    if spec.tb_cache_mib is None:
        return ""
    return f"<tcg><tb-cache unit='MiB'>{spec.tb_cache_mib}</tb-cache></tcg>"


def domain_xml(spec: GuestSpec) -> str:
    a = quoteattr
    label = "LabOS" if spec.guest == "labos" else spec.guest.capitalize()
    return f"""<domain type='qemu'>
  <name>{escape(spec.name)}</name>
  <description>upgrader lab guest ({escape(label)})</description>
  <metadata>
    <upg:guest xmlns:upg='{METADATA_NS}' kind={a(spec.guest)} ip={a(spec.ip)}/>
  </metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
{_os_xml(spec)}
  <features><acpi/>{_tcg_xml(spec)}</features>
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
    ip: str | None  # from <metadata> (or `labip=` on the kernel command line)
    guest: str | None = None  # the guest kind from <metadata>

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
    ip = kind = None
    meta = root.find(f"./metadata/{{{METADATA_NS}}}guest")
    if meta is not None:
        ip, kind = meta.get("ip"), meta.get("kind")
    cmd = root.findtext("./os/cmdline") or ""
    for word in cmd.split():
        if word.startswith("labip=") and ip is None:
            ip = word.removeprefix("labip=").split("/")[0]
    return DomainInfo(root.findtext("name") or "", bridges, macs, disks, console, ip, kind)
