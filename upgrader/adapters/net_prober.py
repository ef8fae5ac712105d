"""The Prober port: TCP / SMTP / HTTP checks against a guest, over the same declared path the
SSH target uses. With a `proxy_command` (ssh_config style, %h %p) the check's port is reached
through it — in the lab that is the segment's access namespace, i.e. the client side of the
production segment; without one, a direct TCP connection from the orchestrator."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from upgrader.adapters.fabric_shell import expand
from upgrader.errors import CheckFailed
from upgrader.ports import Probe

if TYPE_CHECKING:
    from upgrader.plan import Plan


class _Pipe:
    """A byte stream to host:port: a socket, or the stdin/stdout of a proxy command."""

    def __init__(self, host: str, port: int, proxy: str | None, timeout: float) -> None:
        self.timeout, self.proc, self.sock = timeout, None, None
        if proxy:
            self.proc = subprocess.Popen(expand(proxy, host, port, "root"), shell=True, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            try:
                self.sock = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                raise CheckFailed(f"{host}:{port}: {exc}") from exc

    def readline(self) -> str:
        if self.sock is not None:
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = self.sock.recv(1)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace").strip()
        assert self.proc is not None and self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.timeout):
            raise CheckFailed(f"no answer within {self.timeout:.0f} s")
        return self.proc.stdout.readline(4096).decode(errors="replace").strip()

    def send(self, text: str) -> None:
        data = text.encode()
        if self.sock is not None:
            self.sock.sendall(data)
        elif self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def alive_after(self, seconds: float) -> bool:
        """For a proxy: still running after `seconds` means it connected (it exits on refusal)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return True
        return False

    def error(self) -> str:
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr is not None:
            return self.proc.stderr.read().decode(errors="replace").strip()
        return ""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# protocols that greet first: default banner pattern, what to say before closing
BANNERS = {"smtp": ("^220", "QUIT\r\n"), "imap": (r"^\* OK", "a1 LOGOUT\r\n")}


class NetProber:
    def __init__(self, plan: "Plan") -> None:
        self.targets = {"prod": plan.ssh.prod, "staging": plan.ssh.staging}

    def probe(self, role: str, probe: Probe) -> str:
        target = self.targets[role]
        host = probe.host or target.host
        where = f"{probe.kind} {host}:{probe.port} ({role})"
        deadline = time.monotonic() + probe.timeout
        last = "no attempt"
        while True:  # a service may still be starting: retry within the check's timeout
            try:
                return self._once(probe, host, target.proxy_command, where)
            except CheckFailed as exc:
                last = exc.message
            if time.monotonic() + 1 > deadline:
                raise CheckFailed(f"{where}: {last}")
            time.sleep(1)

    def _once(self, probe: Probe, host: str, proxy: str | None, where: str) -> str:
        pipe = _Pipe(host, probe.port, proxy, min(probe.timeout, 10))
        try:
            if probe.kind == "tcp":
                if not pipe.alive_after(0.5):
                    raise CheckFailed(pipe.error() or "connection refused")
                return "open"
            if probe.kind in BANNERS:
                default, goodbye = BANNERS[probe.kind]
                banner = pipe.readline()
                if not banner:
                    raise CheckFailed(pipe.error() or "connection closed without a banner")
                pipe.send(goodbye)
                pattern = probe.expect or default
                if not re.search(pattern, banner):
                    raise CheckFailed(f"banner {banner!r} does not match /{pattern}/")
                return banner
            pipe.send(f"GET {probe.path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            status = pipe.readline()
            parts = status.split()
            if len(parts) < 2 or parts[1] != str(probe.status):
                raise CheckFailed(f"status line {status!r}, expected {probe.status}")
            if probe.expect:
                body = []
                for _ in range(500):
                    line = pipe.readline()
                    body.append(line)
                    if re.search(probe.expect, line):
                        return status
                raise CheckFailed(f"body does not match /{probe.expect}/")
            return status
        except OSError as exc:
            raise CheckFailed(str(exc)) from exc
        finally:
            pipe.close()
