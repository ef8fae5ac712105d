"""The lab's package proxy: apt-cacher-ng on the host's 127.0.0.1:3142 (host network namespace,
loopback only), restricted to the Debian registry.

It runs with a config dir of its own (<lab dir>/etc/apt-cacher-ng), never the system's
/etc/apt-cacher-ng; its cache (<lab dir>/images/cache/apt-cacher-ng) survives `lab down` (only
`--purge` removes it); its logs go to <lab dir>/logs/apt-cacher-ng. `ForceManaged: 1` makes it
refuse every URL that no Remap rule covers, the Remap rules send everything to
deb.debian.org/debian and deb.debian.org/debian-security, and CONNECT (https pass-through) is
refused: nothing but the Debian registry is ever contacted, and only by this proxy.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from upgrader.lab import config as C
from upgrader.lab.daemons import kill_pid, read_pid
from upgrader.lab.errors import LabError

BINARY = "/usr/sbin/apt-cacher-ng"
DEBIAN_BACKEND = "http://deb.debian.org/debian/"
SECURITY_BACKEND = "http://deb.debian.org/debian-security/"


@dataclass(frozen=True)
class ProxyPaths:
    conf_dir: Path
    cache_dir: Path
    log_dir: Path
    pidfile: Path

    @classmethod
    def of(cls, paths: C.LabPaths) -> ProxyPaths:
        return cls(conf_dir=paths.etc / "apt-cacher-ng", cache_dir=paths.cache / "apt-cacher-ng",
                   log_dir=paths.logs / "apt-cacher-ng", pidfile=paths.run / "apt-cacher-ng.pid")


def url() -> str:
    """The proxy URL for apt/debootstrap (`http_proxy`) on the host."""
    return f"http://{C.PKG_PROXY_HOST}:{C.PKG_PROXY_PORT}"


def config_text(p: ProxyPaths) -> str:
    """acng.conf: loopback only, Debian only (ForceManaged + two Remap rules), no CONNECT."""
    return "\n".join([
        "# written by upgrader lab: the lab's package proxy (docs/lab.md). Debian registry only.",
        f"CacheDir: {p.cache_dir}",
        f"LogDir: {p.log_dir}",
        "SupportDir: /usr/lib/apt-cacher-ng",
        f"Port: {C.PKG_PROXY_PORT}",
        f"BindAddress: {C.PKG_PROXY_HOST}",
        f"PidFile: {p.pidfile}",
        "ForeGround: 1",
        # only URLs a Remap rule covers are served; every backend is deb.debian.org
        "ForceManaged: 1",
        f"Remap-debrep: deb.debian.org/debian ftp.debian.org/debian /debian ; {DEBIAN_BACKEND}",
        "Remap-secdeb: security.debian.org security.debian.org/debian-security "
        f"deb.debian.org/debian-security /debian-security ; {SECURITY_BACKEND}",
        # no https pass-through (CONNECT) to anywhere
        "PassThroughPattern: ^$nothing^",
        "ReportPage: acng-report.html",
        "ExThreshold: 30",
        "VerboseLog: 1",
        "UnbufferLogs: 1",
        "",
    ])


def write_config(p: ProxyPaths) -> Path:
    for d in (p.conf_dir, p.cache_dir, p.log_dir, p.pidfile.parent):
        d.mkdir(parents=True, exist_ok=True)
    conf = p.conf_dir / "acng.conf"
    conf.write_text(config_text(p))
    return conf


def pid(paths: C.LabPaths) -> int | None:
    return read_pid(ProxyPaths.of(paths).pidfile, "apt-cacher-ng")


def _answers(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((C.PKG_PROXY_HOST, C.PKG_PROXY_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def start(paths: C.LabPaths, timeout: float = 20.0) -> int:
    """Start apt-cacher-ng unless the lab's one runs; wait until it listens. Returns its pid."""
    p = ProxyPaths.of(paths)
    running = pid(paths)
    if running is not None and _answers():
        return running
    if not Path(BINARY).exists():
        raise LabError(f"{BINARY} is missing", hint="apt-get install apt-cacher-ng (tools/bootstrap.sh setup)")
    if _answers():
        raise LabError(f"{C.PKG_PROXY_HOST}:{C.PKG_PROXY_PORT} is taken by another process",
                       hint="stop the system's apt-cacher-ng (the lab runs its own on that port)")
    write_config(p)
    with open(p.log_dir / "daemon.log", "ab") as log:
        proc = subprocess.Popen([BINARY, "-c", str(p.conf_dir)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    p.pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(0.5):
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LabError(f"apt-cacher-ng did not listen on {C.PKG_PROXY_HOST}:{C.PKG_PROXY_PORT}",
                   hint=f"see {p.log_dir}")


def stop(paths: C.LabPaths) -> list[str]:
    """Stop the lab's apt-cacher-ng by its pid (the cache stays)."""
    p = ProxyPaths.of(paths)
    running = pid(paths)
    stopped = []
    if running is not None:
        kill_pid(running)
        stopped.append(f"apt-cacher-ng ({running})")
    p.pidfile.unlink(missing_ok=True)
    return stopped
