"""Fast checks of the lab's pieces (no guest needed, but marked `lab` like every lab test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from upgrader.errors import InputError
from upgrader.lab import Fault, Segment
from upgrader.lab import config as C
from upgrader.lab.domain import GuestSpec, domain_xml, parse
from upgrader.lab.ssh import SSHTarget

pytestmark = pytest.mark.lab


def test_domain_xml_is_tcg_and_round_trips() -> None:
    spec = GuestSpec(name="mailhost-twin", disk=Path("/l/images/t.qcow2"), kernel=Path("/l/k"),
                     initrd=Path("/l/i"), bridge=C.BR_STG, mac=C.MAILHOST_MAC, ip=C.SERVICE_IP,
                     console_log=Path("/l/logs/t.log"))
    xml = domain_xml(spec)
    assert "<domain type='qemu'>" in xml
    assert "<on_reboot>restart</on_reboot>" in xml
    info = parse(xml)
    assert info.name == "mailhost-twin" and info.segment is Segment.STAGING
    assert info.ip == C.SERVICE_IP and info.macs == [C.MAILHOST_MAC]
    assert info.disks == ["/l/images/t.qcow2"] and info.console_log == "/l/logs/t.log"


def test_faults_parse_and_reject_unknown() -> None:
    assert C.parse_faults(["upgrade-fails", Fault.UPGRADE_FAILS, "no-return-after-reboot"]) == (
        Fault.UPGRADE_FAILS, Fault.NO_RETURN_AFTER_REBOOT)
    with pytest.raises(InputError, match="unknown lab fault"):
        C.parse_faults(["nope"])


def test_names_carry_the_prefix_and_fit_linux_limits() -> None:
    names = list(C.NAMESPACES) + [C.BR_PROD, C.BR_STG, C.CLIENT_VETH_BRIDGE_SIDE, C.CLIENT_VETH_NS_SIDE]
    for seg in C.SEGMENTS.values():
        names += [seg.access_ns, seg.veth_bridge_side, seg.veth_ns_side]
    assert all(n.startswith("upg") for n in names)
    assert all(len(n) <= 15 for n in names if not n.startswith("upg-"))  # IFNAMSIZ - 1


def test_ssh_target_proxy_commands(tmp_path: Path) -> None:
    t = SSHTarget(Segment.STAGING, C.SERVICE_IP, 22, "root", tmp_path / "k", tmp_path / "kh")
    assert t.proxy_command.startswith("ip netns exec upg-acc-stg ") and t.proxy_command.endswith(" nc %h %p")
    assert t.proxy_command_expanded.endswith(" nc 192.0.2.10 22")
    argv = t.openssh_argv(["cat /etc/labos-release"])
    assert argv[-3:] == ["--", "root@192.0.2.10", "cat /etc/labos-release"]
    assert "StrictHostKeyChecking=yes" in argv


def test_lab_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(C.LAB_DIR_ENV, str(tmp_path / "lab"))
    paths = C.LabPaths.resolve()
    assert paths.root == tmp_path / "lab"
    assert paths.uri == f"qemu:///system?socket={tmp_path}/lab/run/libvirt/libvirt-sock"
    assert C.LabPaths.resolve(tmp_path / "other").root == tmp_path / "other"


def test_cli_help_lists_the_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "upgrader.cli.lab", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("up", "down", "status", "ssh", "console"):
        assert cmd in out


def test_cli_up_rejects_an_unknown_fault() -> None:
    r = subprocess.run([sys.executable, "-m", "upgrader.cli.lab", "up", "--fault", "nope"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "nope" in r.stderr
