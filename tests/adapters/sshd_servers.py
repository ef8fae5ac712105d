"""Real sshd's on 127.0.0.1 for the sync-key tests: dropbear (the lab guest's sshd) and OpenSSH's
sshd, each in its own mount namespace where /root is a temp dir of the test (its
.ssh/authorized_keys, the sync's workdir) and /mnt is its data. Two of them are a source and a
target guest for RsyncSyncer on one machine. Started and ended by pid; needs root and unshare."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

SSHD = "/usr/sbin/sshd"
DROPBEAR = "/usr/sbin/dropbear"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def why_not(kind: str) -> str | None:
    """Why a `kind` server cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace binds the server's /root and /mnt)"
    if shutil.which("unshare") is None or shutil.which("rsync") is None or shutil.which("ssh-keygen") is None:
        return "needs unshare, rsync and ssh-keygen"
    binary = {"dropbear": DROPBEAR, "openssh": SSHD}[kind]
    if not os.access(binary, os.X_OK):
        return f"{binary} is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -m refused: {probe.stderr.decode().strip()}"
    return None


@dataclass
class Server:
    kind: str  # dropbear | openssh
    base: Path
    client_key: Path  # the orchestrator's key, authorised without options
    port: int = field(default_factory=free_port)
    args: str = ""  # dropbear: more flags (e.g. -k: no remote forwards); OpenSSH: more sshd_config lines, first
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:  # /root inside the server's namespace
        return self.base / "home"

    @property
    def data(self) -> Path:  # /mnt inside it
        return self.base / "data"

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    @property
    def log(self) -> str:
        path = self.base / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> "Server":
        for d in (self.home / ".ssh", self.data):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        os.chmod(self.home / ".ssh", 0o700)
        public = Path(str(self.client_key) + ".pub").read_text().split()[:2]
        self.authorized_keys.write_text(" ".join(public) + " orchestrator\n")
        os.chmod(self.authorized_keys, 0o600)
        hostkey = self.base / "hostkey"
        if self.kind == "dropbear":
            subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(hostkey)], check=True, capture_output=True)
            host_public = subprocess.run(["dropbearkey", "-y", "-f", str(hostkey)], check=True, capture_output=True,
                                         text=True).stdout
            host_public = next(line for line in host_public.splitlines() if line.startswith("ssh-"))
            server = f"exec {DROPBEAR} -F -E -m -s {self.args} -p 127.0.0.1:{self.port} -r {hostkey} -P {self.base}/pid"
        else:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
            host_public = Path(str(hostkey) + ".pub").read_text()
            config = self.base / "sshd_config"
            config.write_text(  # sshd takes the first value of a keyword: `args` go first
                (self.args + "\n" if self.args else "") + f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\nPidFile {self.base}/pid\n"
                "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nAllowTcpForwarding yes\n"
                "AuthorizedKeysFile .ssh/authorized_keys\nSubsystem sftp /usr/lib/openssh/sftp-server\nLogLevel VERBOSE\n")
            server = f"mkdir -p /run/sshd && exec {SSHD} -D -e -f {config}"
        (self.base / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_public.split()[:2])}\n")
        script = f"mount --bind {self.home} /root && mount --bind {self.data} /mnt && {server}"
        log = open(self.base / "log", "wb")
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode}:\n{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not answer on 127.0.0.1:{self.port}:\n{self.log}")

    def stop(self) -> None:
        """The server's own process group (its session: the server and its connection children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def target(self) -> object:
        from upgrader.plan import SshTarget

        return SshTarget(host="127.0.0.1", port=self.port, user="root", key=str(self.client_key),
                         known_hosts=str(self.base / "known_hosts"))

    def ssh(self, key: Path, *args: str, source: str = "127.0.0.1", timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """The OpenSSH client with `key`, from address `source` (another loopback address works)."""
        return subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(key), "-b", source, "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "-F", "/dev/null", *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def plan_for(prod: Server, staging: Server) -> SimpleNamespace:
    """What FabricShells reads from a plan."""
    return SimpleNamespace(ssh=SimpleNamespace(prod=prod.target(), staging=staging.target()), resolve_path=Path)


@contextlib.contextmanager
def http_stand_in(body: Callable[[str], str]) -> Iterator[int]:
    """An HTTP server on the orchestrator's 127.0.0.1 standing in for a package proxy or mirror:
    every GET is answered 200 with body(path). Yields its port; stopped on exit."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = body(self.path).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
