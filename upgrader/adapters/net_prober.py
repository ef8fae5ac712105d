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


class _Silent(CheckFailed):
    """A proxy ran but nothing came back in time: connected to a slow greeter, or not yet."""


class _Pipe:
    """A byte stream to host:port: a socket, or the stdin/stdout of a proxy command."""

    def __init__(self, host: str, port: int, proxy: str | None, timeout: float, connect_timeout: float | None = None) -> None:
        """`connect_timeout` bounds the connect alone (default: `timeout`); reads wait up to `timeout`.
        Through a proxy the connect cannot be told apart from the first answer: the first line
        waits `connect_timeout`, later ones `timeout`."""
        self.timeout, self.proc, self.sock = timeout, None, None
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._first = True
        if proxy:
            self.proc = subprocess.Popen(expand(proxy, host, port, "root"), shell=True, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            try:
                self.sock = socket.create_connection((host, port), timeout=self.connect_timeout)
                self.sock.settimeout(timeout)
            except TimeoutError as exc:  # no answer yet: a far or slow path, or a SYN lost in a move
                raise _Silent(f"{host}:{port}: no answer to the connect within {self.connect_timeout:.1f} s") from exc
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
        wait, self._first = (self.connect_timeout if self._first else self.timeout), False
        if not sel.select(wait):
            raise _Silent(f"no answer within {wait:.1f} s")
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


# with a proxy every try is a new process (in the lab `ip netns exec` + nc; at a site possibly a
# whole `ssh -W` login): tries through one are at least this far apart (10 spawns a second)
PROXY_INTERVAL_FLOOR = 0.1

# protocols that greet first: default banner pattern, what to say before closing
BANNERS = {"smtp": ("^220", "QUIT\r\n"), "imap": (r"^\* OK", "a1 LOGOUT\r\n")}


class NetProber:
    def __init__(self, plan: "Plan") -> None:
        self.targets = {"prod": plan.ssh.prod, "staging": plan.ssh.staging}

    def probe(self, role: str, probe: Probe) -> str:
        return self._until(role, probe, interval=1.0, connect_timeout=None)

    def wait_answers(self, role: str, probe: Probe, *, interval: float = 0.05, connect_timeout: float = 0.2) -> str:
        """The fast wait (cutover's service_back): a new attempt every `interval` (through a proxy
        at least PROXY_INTERVAL_FLOOR apart), the connect bounded by `connect_timeout`, so a SYN
        lost while the address moves costs one short try, not the client stack's 1 s retransmit.
        Silence (no answer to the connect in time) doubles the next try's connect wait, up to
        10 s, so that a far path still passes; a refusal brings it back to `connect_timeout`."""
        return self._until(role, probe, interval=interval, connect_timeout=connect_timeout)

    def _until(self, role: str, probe: Probe, *, interval: float, connect_timeout: float | None) -> str:
        """Attempts `interval` apart (each a fresh socket or proxy process) until one passes or
        `probe.timeout` has run out."""
        target = self.targets[role]
        host = probe.host or target.host
        where = f"{probe.kind} {host}:{probe.port} ({role})"
        deadline = time.monotonic() + probe.timeout
        if target.proxy_command:
            interval = max(interval, PROXY_INTERVAL_FLOOR)
        last = "no attempt"
        base = connect_timeout
        while True:  # a service may still be starting: retry within the check's timeout
            started = time.monotonic()
            try:
                return self._once(probe, host, target.proxy_command, connect_timeout)
            except CheckFailed as exc:
                last = exc.message
                if base is not None:
                    # silence (a connect or a proxy's first line not answered in time: a far path, a
                    # slow greeter) doubles the next try's wait, up to 10 s; a clear refusal means
                    # the path answers quickly: back to the short wait
                    connect_timeout = min(connect_timeout * 2, 10.0) if isinstance(exc, _Silent) else base
            pause = max(0.0, interval - (time.monotonic() - started))
            if time.monotonic() + max(pause, interval) > deadline:  # no try that starts with ms left
                raise CheckFailed(f"{where}: {last}")
            time.sleep(pause)

    def _once(self, probe: Probe, host: str, proxy: str | None, connect_timeout: float | None) -> str:
        pipe = _Pipe(host, probe.port, proxy, min(probe.timeout, 10), connect_timeout)
        try:
            if probe.kind == "tcp":
                if not pipe.alive_after(0.5):  # through a proxy "open" = it survives; a socket connected already
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
