"""The lab's own libvirtd and virtlogd, inside the upg-lab network namespace.

A root libvirtd always uses /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt (compiled in; qemu.conf has no option to move them). So the lab starts both
daemons in a private mount namespace (`ip netns exec upg-lab unshare --mount`) where these paths
are bind mounts of directories under the lab dir, and /etc/passwd + /etc/group are bind mounts of
copies that add the `libvirt-qemu` user the QEMU driver insists on. The host's own libvirt (if
any) and its files are never touched. /dev/kvm is masked with a read-only empty file in that namespace:
guests are TCG (`type='qemu'`) and a KVM guest can never be started by mistake.

The only trace on the host: the five paths above must exist as mount points. Those that did not
exist are created empty, recorded in run/created-mountpoints, and removed again by `lab down`.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import subprocess
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from upgrader.lab import config as C
from upgrader.lab.errors import LabError, LabTimeout
from upgrader.lab.proc import run

MOUNT_POINTS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt")
QEMU_UID = 64055


def _sources(paths: C.LabPaths) -> dict[str, Path]:
    return {
        "/etc/libvirt": paths.libvirt_etc,
        "/run/libvirt": paths.libvirt_run,
        "/var/lib/libvirt": paths.libvirt_lib,
        "/var/log/libvirt": paths.libvirt_log,
        "/var/cache/libvirt": paths.libvirt_cache,
    }


def write_config(paths: C.LabPaths) -> None:
    for d in _sources(paths).values():
        d.mkdir(parents=True, exist_ok=True)
    (paths.libvirt_etc / "qemu").mkdir(exist_ok=True)
    etc = paths.libvirt_etc
    (etc / "libvirtd.conf").write_text(
        "# written by upgrader lab: private libvirtd, unix socket under the lab dir, root only\n"
        f'unix_sock_dir = "{paths.libvirt_run}"\n'
        'unix_sock_group = "root"\n'
        'unix_sock_ro_perms = "0700"\n'
        'unix_sock_rw_perms = "0700"\n'
        'unix_sock_admin_perms = "0700"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
        f'log_outputs = "3:file:{paths.logs}/libvirtd.log"\n'
    )
    (etc / "virtlogd.conf").write_text(
        f'log_outputs = "3:file:{paths.logs}/virtlogd.log"\n'
    )
    (etc / "qemu.conf").write_text(
        "# written by upgrader lab: TCG guests run as root, no cgroups, no security driver\n"
        'user = "root"\n'
        'group = "root"\n'
        "dynamic_ownership = 0\n"
        "remember_owner = 0\n"
        'security_driver = "none"\n'
        "namespaces = [ ]\n"
        "cgroup_controllers = [ ]\n"
        'stdio_handler = "logd"\n'
    )
    (etc / "libvirt.conf").write_text("")
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if not any(line.startswith("libvirt-qemu:") for line in passwd.splitlines()):
        passwd += f"libvirt-qemu:x:{QEMU_UID}:{QEMU_UID}:Libvirt Qemu (lab):/var/lib/libvirt:/usr/sbin/nologin\n"
    for name in ("libvirt-qemu", "kvm"):
        if not any(line.startswith(name + ":") for line in group.splitlines()):
            group += f"{name}:x:{QEMU_UID if name == 'libvirt-qemu' else QEMU_UID + 1}:\n"
    (paths.etc / "passwd").write_text(passwd)
    (paths.etc / "group").write_text(group)


def ensure_mount_points(paths: C.LabPaths) -> None:
    created = []
    for mp in MOUNT_POINTS:
        if not os.path.isdir(mp):
            os.makedirs(mp)
            created.append(mp)
    if created:
        with paths.created_dirs.open("a") as f:
            f.writelines(mp + "\n" for mp in created)


def remove_mount_points(paths: C.LabPaths) -> list[str]:
    """rmdir the mount points the lab created (only if still empty)."""
    removed = []
    if paths.created_dirs.exists():
        for mp in dict.fromkeys(paths.created_dirs.read_text().split()):
            try:
                os.rmdir(mp)
                removed.append(mp)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not empty: something else uses it now; leave it
        paths.created_dirs.unlink()
    return removed


# --- processes ---------------------------------------------------------------------------------


def read_pid(pidfile: Path, expect: str) -> int | None:
    """The pid in pidfile if that process is alive and its command line mentions `expect`."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return pid if expect in cmdline else None


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, poll until gone, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class DaemonState:
    name: str
    pidfile: Path
    pid: int | None

    @property
    def alive(self) -> bool:
        return self.pid is not None


def states(paths: C.LabPaths) -> list[DaemonState]:
    return [
        DaemonState("virtlogd", paths.virtlogd_pid, read_pid(paths.virtlogd_pid, "virtlogd")),
        DaemonState("libvirtd", paths.libvirtd_pid, read_pid(paths.libvirtd_pid, "libvirtd")),
        DaemonState("mailsink", paths.mailsink_pid, read_pid(paths.mailsink_pid, "upgrader.lab.mailsink")),
    ]


def start_mailsink(paths: C.LabPaths, timeout: float = 15.0) -> None:
    """The SMTP sink customers' notices go to in the lab (127.0.0.1:MAILSINK_PORT, host namespace)."""
    if read_pid(paths.mailsink_pid, "upgrader.lab.mailsink") is not None:
        return
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.logs / "mailsink.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "upgrader.lab.mailsink", "--dir", str(paths.mail),
                                 "--port", str(C.MAILSINK_PORT)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    paths.mailsink_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", C.MAILSINK_PORT), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise LabError(f"the lab's SMTP sink did not start on 127.0.0.1:{C.MAILSINK_PORT}",
                   hint=f"see {paths.logs / 'mailsink.log'}; is the port taken?")


def qemu_pids(paths: C.LabPaths) -> dict[str, int]:
    """QEMU processes of the lab's guests, from the pidfiles libvirtd writes."""
    found = {}
    qemu_run = paths.libvirt_run / "qemu"
    for pidfile in sorted(qemu_run.glob("*.pid")) if qemu_run.is_dir() else []:
        pid = read_pid(pidfile, "qemu-system")
        if pid is not None:
            found[pidfile.stem] = pid
    return found


def start(paths: C.LabPaths, can_connect: Callable[[], bool], timeout: float = 60.0) -> None:
    """Start virtlogd + libvirtd (unless both run and answer). Polls the socket until ready."""
    running = {d.name: d for d in states(paths)}
    if running["libvirtd"].alive and running["virtlogd"].alive and can_connect():
        return
    stop(paths)
    write_config(paths)
    ensure_mount_points(paths)
    paths.logs.mkdir(parents=True, exist_ok=True)
    _spawn(paths, can_connect, timeout, with_virtlogd=True)


def restart_libvirtd(paths: C.LabPaths, can_connect: Callable[[], bool], timeout: float = 60.0) -> int:
    """Stop libvirtd (by its pid) and start it again, as an upgrade of the host's libvirt would:
    the guests and virtlogd keep running; libvirtd re-attaches to them. Returns the new pid."""
    old = read_pid(paths.libvirtd_pid, "libvirtd")
    if old is None:
        raise LabError("the lab's libvirtd is not running", hint="`upgrader lab up` first")
    kill_pid(old)
    paths.libvirtd_pid.unlink(missing_ok=True)
    _spawn(paths, can_connect, timeout, with_virtlogd=False)
    new = read_pid(paths.libvirtd_pid, "libvirtd")
    assert new is not None
    return new


def _spawn(paths: C.LabPaths, can_connect: Callable[[], bool], timeout: float, *, with_virtlogd: bool) -> None:
    nokvm = shlex.quote(str(paths.run / "nokvm"))
    binds = [f"mount --bind {shlex.quote(str(src))} {mp}" for mp, src in _sources(paths).items()]
    binds += [f"mount --bind {shlex.quote(str(paths.etc / 'passwd'))} /etc/passwd",
              f"mount --bind {shlex.quote(str(paths.etc / 'group'))} /etc/group",
              # a read-only empty regular file: libvirt sees KVM as unusable (access W_OK fails
              # with EROFS), so its capability cache stays valid and QEMU cannot use KVM
              f"if [ -e /dev/kvm ]; then : > {nokvm}; mount --bind {nokvm} /dev/kvm;"
              " mount -o remount,bind,ro /dev/kvm; fi"]
    script = "set -e\n" + "\n".join(binds) + "\n" + (
        f"virtlogd -d -p {shlex.quote(str(paths.virtlogd_pid))}\n" if with_virtlogd else ""
    ) + f"exec libvirtd -d -p {shlex.quote(str(paths.libvirtd_pid))}\n"
    run(["ip", "netns", "exec", C.NS_LAB, "unshare", "--mount", "--propagation", "private",
         "/bin/sh", "-c", script], timeout=timeout,
        hint=f"see {paths.logs}/libvirtd.log and {paths.logs}/virtlogd.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(paths.libvirtd_pid, "libvirtd") and can_connect():
            return
        time.sleep(0.1)
    raise LabTimeout(f"the lab's libvirtd did not answer on {paths.libvirt_socket} within {timeout:.0f} s",
                     hint=f"see {paths.logs}/libvirtd.log")


def stop(paths: C.LabPaths) -> list[str]:
    """Stop the lab's daemons and any QEMU they left behind, by pid from their pidfiles."""
    stopped = []
    for name, pid in qemu_pids(paths).items():
        kill_pid(pid)
        stopped.append(f"qemu {name} ({pid})")
    for d in reversed(states(paths)):  # libvirtd first, then virtlogd
        if d.pid is not None:
            kill_pid(d.pid)
            stopped.append(f"{d.name} ({d.pid})")
        d.pidfile.unlink(missing_ok=True)
    return stopped


def check_tools() -> None:
    missing = [t for t in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "ip", "unshare",
                           "mkfs.ext4", "debugfs", "dropbearkey", "ssh-keygen")
               if not any(os.access(os.path.join(d, t), os.X_OK)
                          for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))]
    if missing:
        raise LabError(f"missing tools for the lab: {', '.join(missing)}",
                       hint="see docs/lab.md for the Debian packages the lab needs")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, libvirtd)",
                       hint="run it as root, e.g. in the CI's lab job")
