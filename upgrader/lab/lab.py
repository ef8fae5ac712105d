"""The rehearsal lab: `Lab(lab_dir).up()`, `.down()`, `.status()` and helpers that the product's
end-to-end tests use: SSH to guests (lab_guests.py), commands in the client namespace, SMTP and
IMAP probes, mailbox contents (lab_clients.py).

`up()` is idempotent (reuses what is healthy); `down()` is idempotent and removes everything the
lab created except the image cache (`purge=True` removes that too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import libvirt

from upgrader.lab import config as C
from upgrader.lab import daemons, debian_guest, debian_image, image, netns, pkgproxy
from upgrader.lab.domain import DomainInfo, GuestSpec, domain_xml, parse
from upgrader.lab.errors import LabError, LabNotUp
from upgrader.lab.lab_clients import LabClients
from upgrader.lab.lab_guests import LabGuests
from upgrader.lab.lab_holds import LabHolds
from upgrader.lab.proc import run
from upgrader.lab.ssh import SSHTarget, proxy_command

Progress = Callable[[str], None]


def _quiet_libvirt() -> None:
    """libvirt-python prints every error to stderr by default; the lab raises instead.
    (Process-wide: libvirt has no per-connection handler.)"""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class Lab(LabGuests, LabClients, LabHolds):
    def __init__(self, lab_dir: str | os.PathLike[str] | None = None, *,
                 progress: Progress | None = None) -> None:
        self.paths = C.LabPaths.resolve(lab_dir)
        self._progress = progress or (lambda msg: None)
        _quiet_libvirt()

    # --- identity -------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self.paths.uri

    @property
    def lab_dir(self) -> Path:
        return self.paths.root

    def __repr__(self) -> str:
        return f"Lab({str(self.paths.root)!r})"

    def _say(self, msg: str) -> None:
        self._progress(msg)

    # --- libvirt --------------------------------------------------------------------------

    def _can_connect(self) -> bool:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    @contextlib.contextmanager
    def libvirt_conn(self) -> Iterator[libvirt.virConnect]:
        """A connection to the lab's libvirtd."""
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise LabNotUp(f"the lab's libvirtd does not answer on {self.paths.libvirt_socket}: "
                           f"{exc.get_error_message()}") from exc
        try:
            yield conn
        finally:
            conn.close()

    def domains(self) -> list[tuple[DomainInfo, str]]:
        """(info, state) of every domain on the lab's libvirtd."""
        states = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                  libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
                  libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_BLOCKED: "blocked",
                  libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
        out = []
        with self.libvirt_conn() as conn:
            for dom in conn.listAllDomains():
                state = states.get(dom.state()[0], "unknown")
                out.append((parse(dom.XMLDesc()), state))
        return sorted(out, key=lambda x: x[0].name)

    # --- the guest kind ---------------------------------------------------------------------

    @property
    def guest_kind(self) -> C.GuestKind:
        """The mailhost's kind, as `lab up` recorded it in lab.json (LabOS if none)."""
        try:
            return C.GuestKind(json.loads(self.paths.state_file.read_text()).get("guest", "labos"))
        except (OSError, ValueError):
            return C.GuestKind.LABOS

    # --- up -------------------------------------------------------------------------------

    def up(self, faults: Iterable[str | C.Fault] = (), *, timeout: float = 180.0,
           guest: str | C.GuestKind | None = None) -> dict[str, Any]:
        """Bring the lab up (or complete it). With faults, /etc/labos-faults on mailhost is set to
        exactly those; without, it is left as it is. `guest` picks the mailhost's kind (default:
        the one recorded in lab.json, else LabOS); another kind than the running one replaces
        mailhost. Returns status()."""
        wanted = C.parse_faults(faults)
        kind = C.GuestKind(str(guest)) if guest is not None else self.guest_kind
        C.check_faults_for(kind, wanted)
        started = time.monotonic()
        daemons.check_tools()
        for d in (self.paths.run, self.paths.etc, self.paths.logs, self.paths.keys, self.paths.images,
                  self.paths.cache):
            d.mkdir(parents=True, exist_ok=True)
        self._say("network namespaces and bridges")
        netns.setup()
        self._ensure_keys()
        bundle = None
        if kind is C.GuestKind.LABOS:
            base, built = image.ensure_image(self.paths.cache, self._say)
            if not built:
                self._say(f"LabOS image labos-{base.key} (cached)")
            bundle = self._link_boot_files(base)[2]
        else:
            self._say(f"package proxy (apt-cacher-ng) on {pkgproxy.url()}")
            pkgproxy.start(self.paths)
            deb, built = debian_image.ensure_image(self.paths.cache, pkgproxy.url(), self._say)
            if not built:
                self._say(f"Debian image {debian_image.PREFIX}{deb.key} (cached)")
        self._say("libvirtd + virtlogd in upg-lab")
        daemons.start(self.paths, self._can_connect)
        daemons.start_mailsink(self.paths)
        if kind is not self.guest_kind or not self.paths.state_file.exists():
            self.remove_guest(C.MAILHOST)  # another kind's mailhost (or a half-built lab's)
        self._write_state(bundle, kind)
        created_disk = self._ensure_mailhost(wanted)
        self._say("waiting for mailhost SSH")
        target = self.ssh_target(C.Segment.PROD)
        self.wait_ssh(C.Segment.PROD, timeout=timeout)
        if wanted and not created_disk:
            self.set_faults(C.Segment.PROD, wanted)
        if kind is C.GuestKind.DEBIAN:
            self._say("waiting for mailhost's systemd (is-system-running)")
            state = self.guest_exec(C.Segment.PROD, "systemctl is-system-running --wait", check=False,
                                    timeout=timeout).stdout.strip()
            if state != "running":
                failed = self.guest_exec(C.Segment.PROD, "systemctl --failed --no-legend --plain",
                                         check=False).stdout.strip()
                self._say(f"warning: mailhost's systemd is {state}: {failed or 'no failed unit'}")
        check = self.plan_values()["service_check"]
        smtp = self.guest_exec(C.Segment.PROD, check if kind is C.GuestKind.DEBIAN else "/etc/init.d/smtpd status",
                               check=False)
        if not smtp.ok:
            self._say(f"warning: SMTP on mailhost: {smtp.stdout.strip() or smtp.stderr.strip()}")
        self._say(f"lab up in {time.monotonic() - started:.1f} s ({target.user}@{target.host} via "
                  f"{C.NS_ACC_PROD})")
        return self.status()

    def _ensure_keys(self) -> None:
        keys = self.paths.keys
        keys.mkdir(mode=0o700, exist_ok=True)
        if not self.paths.ssh_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "upgrader-lab",
                 "-f", str(self.paths.ssh_key)])
        if not self.paths.host_key.exists():
            run(["dropbearkey", "-t", "ed25519", "-f", str(self.paths.host_key)])
        if not self.paths.host_key_pub.exists() or not self.paths.known_hosts.exists():
            out = run(["dropbearkey", "-y", "-f", str(self.paths.host_key)]).stdout
            pub = next((line for line in out.splitlines() if line.startswith("ssh-")), None)
            if pub is None:
                raise LabError(f"cannot read the public part of {self.paths.host_key}")
            keytype, b64 = pub.split()[:2]
            self.paths.host_key_pub.write_text(f"{keytype} {b64} mailhost-lab\n")
            # one entry for the service IP: prod and its twin on staging share it and the key
            self.paths.known_hosts.write_text(f"{C.SERVICE_IP},{C.MAILHOST} {keytype} {b64}\n")

    def _link_boot_files(self, base: image.BaseImage) -> tuple[Path, Path, Path]:
        """Kernel, initrd and update bundle under images/ (hard links into the cache), so that a
        domain never points into a cache directory that a rebuild may remove."""
        d = self.paths.images / "boot"
        d.mkdir(parents=True, exist_ok=True)
        out = []
        for src, name in ((base.vmlinuz, f"vmlinuz-{base.key}"), (base.initrd, f"initrd-{base.key}"),
                          (base.bundle, image.BUNDLE_NAME),
                          (base.bundle.with_name(base.bundle.name + ".sha256"), image.BUNDLE_NAME + ".sha256")):
            dest = d / name
            if name.startswith(image.BUNDLE_NAME) and dest.exists():
                dest.unlink()
            if not dest.exists():
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
            out.append(dest)
        return out[0], out[1], out[2]

    def _guest_files(self, faults: Sequence[C.Fault]) -> list[image.GuestFile]:
        return [
            image.GuestFile("/etc/dropbear/dropbear_ed25519_host_key", self.paths.host_key.read_bytes(), 0o600),
            image.GuestFile("/root/.ssh/authorized_keys",
                            self.paths.ssh_key.with_suffix(".pub").read_bytes(), 0o600),
            image.GuestFile(C.FAULTS_FILE, "".join(f"{f}\n" for f in faults).encode(), 0o644),
        ]

    def _ensure_mailhost(self, faults: Sequence[C.Fault]) -> bool:
        return self._ensure_guest(C.MAILHOST, C.Segment.PROD, faults)

    def _guest_recipe(self, name: str, segment: C.Segment,
                      faults: Sequence[C.Fault]) -> tuple[GuestSpec, Callable[[Path], None]]:
        """(libvirt spec, disk maker) for a guest of the lab's kind."""
        disk = self.paths.disk(name)
        bridge = C.SEGMENTS[segment].bridge
        if self.guest_kind is C.GuestKind.DEBIAN:
            deb = debian_image.cached_image(self.paths.cache)
            if deb is None:
                pkgproxy.start(self.paths)
                deb, _ = debian_image.ensure_image(self.paths.cache, pkgproxy.url(), self._say)
            files = debian_guest.guest_files(self.paths, faults)
            return (debian_guest.spec(name, disk, bridge, self.paths.console_log(name)),
                    lambda dest: debian_image.make_disk(deb, dest, files))
        base = self._base_image()
        kernel, initrd, _ = self._link_boot_files(base)
        spec = GuestSpec(name=name, disk=disk, kernel=kernel, initrd=initrd, bridge=bridge, mac=C.MAILHOST_MAC,
                         ip=C.SERVICE_IP, console_log=self.paths.console_log(name))
        return spec, lambda dest: image.make_disk(base, dest, self._guest_files(faults))

    def _ensure_guest(self, name: str, segment: C.Segment, faults: Sequence[C.Fault]) -> bool:
        """Define and start a guest of the lab's kind if needed. True if its disk was (re)created."""
        disk = self.paths.disk(name)
        spec, make_disk = self._guest_recipe(name, segment, faults)
        boot_files = [str(p) for p in (spec.kernel, spec.initrd) if p is not None]
        created = False
        with self.libvirt_conn() as conn:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                dom = None
            if dom is not None:
                info = parse(dom.XMLDesc())
                if not all(Path(p).exists() for p in info.disks + boot_files) and not dom.isActive():
                    self._say(f"{name}'s disk or kernel is gone: redefining it")
                    dom.undefine()
                    dom = None
            if dom is None:
                if not disk.exists():
                    self._say(f"creating {name}'s disk")
                    make_disk(disk)
                    created = True
                dom = conn.defineXML(domain_xml(spec))
            if not dom.isActive():
                self._say(f"starting {name} (TCG)")
                try:
                    dom.create()
                except libvirt.libvirtError as exc:
                    raise LabError(f"cannot start {name}: {exc.get_error_message()}",
                                   hint=f"see {self.paths.libvirt_log}/qemu/{name}.log") from exc
        return created

    def remove_guest(self, name: str) -> None:
        """Destroy and undefine a guest and delete its disk and console log (no error if absent)."""
        with self.libvirt_conn() as conn:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                dom = None
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        self.paths.disk(name).unlink(missing_ok=True)
        self.paths.console_log(name).unlink(missing_ok=True)

    def add_guest(self, name: str, segment: C.Segment | str = C.Segment.STAGING,
                  faults: Iterable[str | C.Fault] = (), *, timeout: float = 120.0) -> SSHTarget:
        """A fresh LabOS release-1 guest with mailhost's identity (IP, MAC, SSH host key) on a
        segment, e.g. a stand-in twin on staging. Waits for its SSH. Test helper: the product
        makes its own twins from mailhost's disk."""
        seg = C.Segment(str(segment))
        self._ensure_guest(name, seg, C.parse_faults(faults))
        self.wait_ssh(name, timeout=timeout)
        return self.target(name)

    def recreate_mailhost(self, faults: Iterable[str | C.Fault] = (), *, timeout: float = 120.0) -> str:
        """Throw mailhost away and boot a fresh release-1 one (same keys); returns its boot id.
        For tests that need a pristine prod (e.g. one per fault scenario)."""
        self.remove_guest(C.MAILHOST)
        wanted = C.parse_faults(faults)
        C.check_faults_for(self.guest_kind, wanted)
        self._ensure_mailhost(wanted)
        self.wait_ssh(C.MAILHOST, timeout=timeout)
        return self.boot_id(C.MAILHOST)

    def restart_libvirtd(self, timeout: float = 60.0) -> int:
        """Fault injection: restart the lab's libvirtd (guests keep running). Returns its new pid."""
        return daemons.restart_libvirtd(self.paths, self._can_connect, timeout)

    @property
    def filler(self) -> Path:
        return self.paths.images / "fill.bin"

    def fill_disk(self, leave: int) -> int:
        """Fault injection: allocate a file in the images directory so only about `leave` bytes
        stay available (f_bavail) on that filesystem. Returns its size. `unfill_disk` (and `lab
        down`) remove it. (Blocks reserved for root are not touched; libvirt's pool figure
        counts them as free, which is why the libvirt adapter also asks statvfs.)"""
        self.unfill_disk()
        st = os.statvfs(self.paths.images)
        size = max(0, st.f_bavail * st.f_frsize - leave)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if size:
                os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        return size

    def unfill_disk(self) -> None:
        self.filler.unlink(missing_ok=True)

    def _base_image(self) -> image.BaseImage:
        base = image.cached_image(self.paths.cache)
        if base is None:
            base, _ = image.ensure_image(self.paths.cache, self._say)
        return base

    def _write_state(self, bundle: Path | None, kind: C.GuestKind) -> None:
        data = {"guest": kind.value, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.paths.state_file)  # plan_values() reads the kind from it
        data["plan"] = self.plan_values(bundle)
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.paths.state_file)

    # --- plan-relevant values ------------------------------------------------------------

    def plan_values(self, bundle: Path | None = None) -> dict[str, Any]:
        """What a plan for the lab's mailhost needs (also in <lab dir>/lab.json). `guest` is the
        mailhost's kind; the Debian guest's values replace LabOS's commands (docs/lab.md)."""
        common = self._common_plan_values()
        if self.guest_kind is C.GuestKind.DEBIAN:
            return {**common, "guest": C.GuestKind.DEBIAN.value,
                    **debian_guest.plan_values(pkgproxy.url())}
        return {**common, "guest": C.GuestKind.LABOS.value, **self._labos_plan_values(bundle)}

    def _common_plan_values(self) -> dict[str, Any]:
        return {
            "libvirt_uri": self.uri,
            "domain": C.MAILHOST,
            "service_ip": C.SERVICE_IP,
            "mac": C.MAILHOST_MAC,
            "prod_bridge": C.BR_PROD,
            "staging_bridge": C.BR_STG,
            "ssh_user": C.SSH_USER,
            "ssh_port": C.SSH_PORT,
            "ssh_key": str(self.paths.ssh_key),
            "known_hosts": str(self.paths.known_hosts),
            "proxy_command": {str(s): proxy_command(s) for s in C.Segment},
            "client_namespace": C.NS_CLIENT,
            "client_ip": C.CLIENT_IP,
            "images_dir": str(self.paths.images),
            "logs_dir": str(self.paths.logs),
            "faults_file": C.FAULTS_FILE,
        }

    def _labos_plan_values(self, bundle: Path | None) -> dict[str, Any]:
        return {
            "quiesce": C.QUIESCE_CMD,
            "resume": C.RESUME_CMD,
            "service_check": C.SMTP_CHECK_CMD,
            "upgrade": ["labos-update fetch", "labos-update install", "reboot",
                        "labos-update install", "labos-update install"],
            "update_bundle": str(bundle or self.paths.images / "boot" / image.BUNDLE_NAME),
        }

    # --- down -----------------------------------------------------------------------------

    def down(self, purge: bool = False) -> list[str]:
        """Destroy + undefine every domain on the lab's libvirtd, stop the daemons, remove the
        namespaces and the lab's files (the image cache stays unless purge). Idempotent; keeps
        going past errors and raises the first one at the end."""
        done: list[str] = []
        errors: list[Exception] = []

        def attempt(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                errors.append(exc)

        attempt(lambda: done.extend(self._remove_domains()))
        attempt(lambda: done.extend(daemons.stop(self.paths)))
        attempt(lambda: done.extend(pkgproxy.stop(self.paths)))
        attempt(lambda: done.extend(netns.teardown()))
        attempt(lambda: done.extend(daemons.remove_mount_points(self.paths)))
        attempt(lambda: done.extend(self._remove_files(purge)))
        for line in done:
            self._say(f"removed {line}")
        if errors:
            first = errors[0]
            if isinstance(first, LabError):
                raise first
            raise LabError(f"lab down: {first}") from first
        return done

    def _remove_domains(self) -> list[str]:
        if not daemons.read_pid(self.paths.libvirtd_pid, "libvirtd") or not self._can_connect():
            return []
        removed = []
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        with self.libvirt_conn() as conn:
            for dom in conn.listAllDomains():
                name = dom.name()
                if dom.isActive():
                    dom.destroy()
                try:
                    dom.undefineFlags(flags)
                except libvirt.libvirtError:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()  # transient domains are gone after destroy
                removed.append(f"domain {name}")
        return removed

    def _remove_files(self, purge: bool) -> list[str]:
        root = self.paths.root
        if not root.exists():
            return []
        if purge:
            shutil.rmtree(root)
            return [str(root)]
        removed = []
        for child in sorted(root.iterdir()):
            if child == self.paths.images:
                for sub in sorted(child.iterdir()):
                    if sub != self.paths.cache:
                        _rm(sub)
                        removed.append(str(sub))
                continue
            _rm(child)
            removed.append(str(child))
        return removed

    # --- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        net = netns.state()
        daemon_states = daemons.states(self.paths)
        libvirt_ok = all(d.alive for d in daemon_states) and self._can_connect()
        guests: list[dict[str, Any]] = []
        if libvirt_ok:
            for info, state in self.domains():
                guests.append({"name": info.name, "state": state,
                               "segment": str(info.segment) if info.segment else None,
                               "bridges": info.bridges, "macs": info.macs, "ip": info.ip,
                               "disks": info.disks, "console_log": info.console_log})
        mailhost_running = any(g["name"] == C.MAILHOST and g["state"] == "running" for g in guests)
        cached = sorted(p.name for pattern in ("labos-*", f"{debian_image.PREFIX}*")
                        for p in self.paths.cache.glob(pattern)) if self.paths.cache.is_dir() else []
        return {
            "lab_dir": str(self.paths.root),
            "uri": self.uri,
            "up": bool(net.links_ok and libvirt_ok and mailhost_running),
            "daemons": [{"name": d.name, "pid": d.pid, "alive": d.alive, "pidfile": str(d.pidfile)}
                        for d in daemon_states],
            "namespaces": net.namespaces,
            "segments": [{"segment": str(s), "bridge": n.bridge, "present": net.bridges[n.bridge],
                          "access_namespace": n.access_ns, "access_ip": C.ACCESS_IP,
                          "proxy_command": proxy_command(s)} for s, n in C.SEGMENTS.items()],
            "client": {"namespace": C.NS_CLIENT, "ip": C.CLIENT_IP,
                       "present": C.NS_CLIENT in net.namespaces},
            "guests": guests,
            "image_cache": cached,
            "guest": self.guest_kind.value,
            "package_proxy": {"url": pkgproxy.url(), "pid": pkgproxy.pid(self.paths)},
            "plan": self.plan_values(),
        }

    def pristine(self, faults: Iterable[str | C.Fault] = ()) -> str:
        """A fresh release-1 mailhost (with these lab faults) and nothing else: twins and
        overlays of earlier runs gone. Returns mailhost's boot id."""
        for info, _ in self.domains():
            if info.name != C.MAILHOST:
                self.remove_guest(info.name)
        boot_id = self.recreate_mailhost(faults=faults)
        for leftover in self.paths.images.glob(f"{C.MAILHOST}.*.qcow2"):
            leftover.unlink()
        return boot_id

    def image_names(self) -> set[str]:
        return {p.name for p in self.paths.images.glob("*.qcow2")}



def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


__all__ = ["Lab"]
