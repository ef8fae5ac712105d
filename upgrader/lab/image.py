"""The LabOS guest image, built from Debian packages installed on this machine.

The Debian kernel and initrd (/boot) boot an ext4 root that holds busybox (static), dropbear,
dbclient, rsync, sftp-server (their shared libraries copied as `ldd` lists them), the NIC modules,
and the LabOS files under guest/rootfs (init scripts, labsmtpd, labos-update). The update bundle
(guest/bundle, LabOS release 2) is packed into /var/db/labos-update/labos-2.tar.

Build once, cache by content hash of the inputs (this file, the guest files, the package versions
and the kernel), under <lab dir>/images/cache/labos-<hash>/. Per-lab secrets (the SSH host key,
root's authorized_keys) and the fault switches are written into each guest's own disk with
debugfs, so the cached image holds no secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from upgrader.lab.errors import LabError
from upgrader.lab.proc import run

GUEST_DIR = Path(__file__).parent / "guest"
ROOTFS_DIR = GUEST_DIR / "rootfs"
BUNDLE_DIR = GUEST_DIR / "bundle"
IMAGE_SIZE = "384M"
BUNDLE_NAME = "labos-2.tar"

# Debian packages whose files go into the image (and whose versions key the cache)
PACKAGES = ("busybox-static", "dropbear-bin", "rsync", "openssh-sftp-server", "libc6")
BINARIES = {
    # host path -> guest path
    "/usr/sbin/dropbear": "/usr/sbin/dropbear",
    "/usr/bin/dbclient": "/usr/bin/dbclient",
    "/usr/bin/dropbearkey": "/usr/bin/dropbearkey",
    "/usr/bin/dropbearconvert": "/usr/bin/dropbearconvert",
    "/usr/bin/rsync": "/usr/bin/rsync",
    "/usr/lib/openssh/sftp-server": "/usr/lib/sftp-server",  # where dropbear looks for it
}
# the NIC (virtio_net and its deps) and the ACPI power button as an input event device (acpid)
MODULES = ("kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko",
           "kernel/drivers/net/virtio_net.ko", "kernel/drivers/acpi/button.ko",
           "kernel/drivers/input/evdev.ko")
EXECUTABLE_DIRS = ("etc/init.d/", "usr/sbin/", "usr/local/bin/", "etc/acpi/")


@dataclass(frozen=True)
class Kernel:
    release: str  # 6.1.0-56-amd64
    vmlinuz: Path
    initrd: Path


@dataclass(frozen=True)
class BaseImage:
    """A cached, built LabOS image: the root file system (raw ext4) plus kernel and initrd."""

    dir: Path
    key: str
    root_raw: Path
    vmlinuz: Path
    initrd: Path
    bundle: Path
    kernel_release: str


def find_kernel() -> Kernel:
    """The newest Debian kernel in /boot that has an initrd and its modules."""
    candidates = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        release = vmlinuz.name.removeprefix("vmlinuz-")
        initrd = Path("/boot") / f"initrd.img-{release}"
        if initrd.exists() and Path("/lib/modules", release).is_dir():
            candidates.append(Kernel(release, vmlinuz, initrd))
    if not candidates:
        raise LabError("no Debian kernel with an initrd and modules in /boot",
                       hint="apt-get install linux-image-amd64")

    def version_key(k: Kernel) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", k.release)]

    return max(candidates, key=version_key)


def package_versions() -> dict[str, str]:
    result = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *PACKAGES], check=False)
    versions = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    missing = [p for p in PACKAGES if not versions.get(p)]
    if missing:
        raise LabError(f"missing Debian packages for the lab guest: {' '.join(missing)}",
                       hint=f"apt-get install {' '.join(missing)}")
    return versions


def tree_digest(h: hashlib._Hash, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            h.update(f"F {rel}\n".encode())
            h.update(path.read_bytes())
        elif path.is_dir():
            h.update(f"D {rel}\n".encode())


def cache_key(kernel: Kernel) -> str:
    """Content hash of everything that goes into the image."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    tree_digest(h, ROOTFS_DIR)  # not GUEST_DIR: guest/debian is the Debian guest's
    tree_digest(h, BUNDLE_DIR)
    h.update(json.dumps(package_versions(), sort_keys=True).encode())
    for p in (kernel.vmlinuz, kernel.initrd):
        st = p.stat()
        h.update(f"{p} {st.st_size} {st.st_mtime_ns}\n".encode())
    for mod in MODULES:
        h.update(Path("/lib/modules", kernel.release, mod).read_bytes())
    return h.hexdigest()[:16]


def cached_image(cache_dir: Path) -> BaseImage | None:
    """The cached image for today's inputs, if it was built."""
    kernel = find_kernel()
    key = cache_key(kernel)
    d = cache_dir / f"labos-{key}"
    manifest = d / "manifest.json"
    if not manifest.exists():
        return None
    return _image_at(d, key, kernel.release)


def _image_at(d: Path, key: str, release: str) -> BaseImage:
    return BaseImage(dir=d, key=key, root_raw=d / "root.raw", vmlinuz=d / "vmlinuz",
                     initrd=d / "initrd.img", bundle=d / BUNDLE_NAME, kernel_release=release)


def ensure_image(
    cache_dir: Path, log: Callable[[str], None] = lambda msg: None
) -> tuple[BaseImage, bool]:
    """Return (image, built): the cached image for today's inputs, building it if needed.
    Images for other inputs are removed."""
    kernel = find_kernel()
    key = cache_key(kernel)
    d = cache_dir / f"labos-{key}"
    if (d / "manifest.json").exists():
        return _image_at(d, key, kernel.release), False
    log(f"building LabOS image labos-{key} (kernel {kernel.release})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="labos-build-", dir=cache_dir))
    try:
        work.chmod(0o755)
        _build(work, kernel)
        (work / "manifest.json").write_text(json.dumps(
            {"key": key, "kernel": kernel.release, "packages": package_versions()}, indent=2) + "\n")
        for old in cache_dir.glob("labos-*"):
            if old.is_dir() and old != work and not old.name.startswith("labos-build-"):
                shutil.rmtree(old, ignore_errors=True)
        os.replace(work, d)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _image_at(d, key, kernel.release), True


# --- building ---------------------------------------------------------------------------------


def _ldd(binary: str) -> list[str]:
    out = run(["ldd", binary]).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    return libs


def _copy_file(src: str | Path, root: Path, dest: str) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def _install_busybox(root: Path) -> None:
    _copy_file("/bin/busybox", root, "/bin/busybox")
    applets = run(["/bin/busybox", "--list-full"]).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def copy_guest_tree(src: Path, root: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        target = root / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(path, target)
        executable = rel.startswith(EXECUTABLE_DIRS) or path.read_bytes().startswith(b"#!")
        target.chmod(0o755 if executable else 0o644)


def _make_bundle(dest: Path) -> None:
    """LabOS 2 update bundle: a tarball of guest/bundle, plus its sha256."""
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(BUNDLE_DIR.rglob("*")):
            rel = path.relative_to(BUNDLE_DIR).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if path.is_file():
                info.mode = 0o755 if rel.startswith("usr/") else 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.mode = 0o755
                tar.addfile(info)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")


def _build(work: Path, kernel: Kernel) -> None:
    root = work / "rootfs"
    for d in ("bin", "sbin", "lib", "lib64", "usr/bin", "usr/sbin", "usr/lib", "usr/local/bin",
              "usr/local/sbin", "etc/dropbear", "proc", "sys", "dev", "run", "tmp", "mnt", "boot",
              "var/mail", "var/log", "var/spool/labsmtpd", "var/db/labos-update", "root/.ssh"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    (root / "root/.ssh").chmod(0o700)
    (root / "var/run").symlink_to("/run")
    _install_busybox(root)
    libs: set[str] = set()
    for src, dest in BINARIES.items():
        if not Path(src).exists():
            raise LabError(f"{src} is missing", hint="see docs/lab.md for the Debian packages the lab needs")
        _copy_file(src, root, dest)
        libs.update(_ldd(src))
    nss = Path("/lib/x86_64-linux-gnu/libnss_files.so.2")
    if nss.exists():
        libs.add(str(nss))
    for lib in sorted(libs):
        _copy_file(lib, root, lib)
    for mod in MODULES:
        _copy_file(Path("/lib/modules", kernel.release, mod), root,
                   f"/lib/modules/{kernel.release}/labos/{Path(mod).name}")
    copy_guest_tree(ROOTFS_DIR, root)
    _make_bundle(root / "var/db/labos-update" / BUNDLE_NAME)
    shutil.copy2(root / "var/db/labos-update" / BUNDLE_NAME, work / BUNDLE_NAME)
    shutil.copy2(root / "var/db/labos-update" / f"{BUNDLE_NAME}.sha256", work / f"{BUNDLE_NAME}.sha256")
    (root / "etc/labos-faults").write_text("")
    # the SSH host key and authorized_keys are per lab: written by write_files()
    raw = work / "root.raw"
    run(["mkfs.ext4", "-q", "-F", "-L", "labos-root", "-E", "root_owner=0:0", "-d", str(root),
         str(raw), IMAGE_SIZE])
    shutil.rmtree(root)
    shutil.copyfile(kernel.vmlinuz, work / "vmlinuz")
    shutil.copyfile(kernel.initrd, work / "initrd.img")


# --- per-guest disks --------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestFile:
    path: str  # absolute path in the guest; its directory must exist in the image
    content: bytes
    mode: int = 0o644


def write_files(raw: Path, files: Sequence[GuestFile], device: str | None = None) -> None:
    """Write files into an (unmounted) ext4 image with debugfs: replace, then set mode/owner.
    `device` is what debugfs opens (default: raw itself; `disk?offset=N` for a partition)."""
    dev = device or str(raw)
    with tempfile.TemporaryDirectory(prefix="labos-files-") as tmp:
        script = []
        for i, f in enumerate(files):
            src = Path(tmp) / f"f{i}"
            src.write_bytes(f.content)
            script += [f"rm {f.path}", f"write {src} {f.path}",
                       f"sif {f.path} mode 0{stat.S_IFREG | f.mode:o}",
                       f"sif {f.path} uid 0", f"sif {f.path} gid 0"]
        cmds = Path(tmp) / "cmds"
        cmds.write_text("\n".join(script) + "\n")
        run(["debugfs", "-w", "-f", str(cmds), dev])
    # debugfs reports most errors on stderr with rc 0: check the result instead
    for f in files:
        got = subprocess.run(["debugfs", "-R", f"cat {f.path}", dev], capture_output=True,
                             check=False).stdout
        if got != f.content:
            raise LabError(f"could not write {f.path} into {raw}")


def make_disk(image: BaseImage, dest: Path, files: Sequence[GuestFile]) -> None:
    """A standalone qcow2 disk (no backing file) for one guest: the image plus its files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_raw = dest.with_name(dest.name + ".raw.tmp")
    tmp_qcow = dest.with_name(dest.name + ".tmp")
    try:
        run(["cp", "--sparse=always", str(image.root_raw), str(tmp_raw)])
        write_files(tmp_raw, files)
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_raw), str(tmp_qcow)])
        os.replace(tmp_qcow, dest)
    finally:
        tmp_raw.unlink(missing_ok=True)
        tmp_qcow.unlink(missing_ok=True)
