"""Remote forwards on a paramiko transport (the Shell port's `forward`): the guest's sshd listens
on its 127.0.0.1:P and hands each connection to us as a `forwarded-tcpip` channel; we join it to
the target (a package proxy) with a TCP connection made from the orchestrator. The guest gets no
route: it reaches that one host:port and nothing else, only while the forward is open.

A target that does not answer is not a hang on the guest: the channel is answered with an HTTP
502 whose reason names the proxy and why (apt: `502 upgrader: package proxy 127.0.0.1:3142
unreachable (Connection refused)`; busybox wget: `server returned error: HTTP/1.0 502 ...`).

paramiko keeps ONE handler per transport for every remote forward (`Transport._tcp_handler`), so
RemoteForwards sets a handler that dispatches on the listening port; the sync's own forward (rsync_syncer)
replaces it for its duration, which never overlaps the package forward (upgrade/validate run
before presync)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from contextlib import suppress
import paramiko

from upgrader.errors import ConnectionLost, ForwardRefused
from upgrader.ports import RemoteForward

log = logging.getLogger("upgrader.forward")

CONNECT_TIMEOUT = 10.0  # the orchestrator's connection to the target (a proxy that does not answer)
CHECK_TIMEOUT = 10.0  # the check that a connection to the guest's port comes through the forward
REQUEST_READ = 5.0  # how long the 502 answer waits for the client's request headers first
_BUFFER = 65536


def _listening(transport: paramiko.Transport, port: int) -> bool:
    """Does something on the guest listen on its 127.0.0.1:`port`? (A direct-tcpip channel there
    opens; an sshd that refuses local forwarding, or nothing listening: False.)"""
    try:
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=CHECK_TIMEOUT)
    except (paramiko.SSHException, OSError, EOFError):
        return False
    with suppress(paramiko.SSHException, OSError, EOFError):
        channel.close()
    return True


def _held(waited: float) -> str:
    return (f"; its port stayed taken for {waited:.0f} s (another session holds it: an open `upgrader ssh --twin`, "
            "or the session of an upgrader that was killed - close it, or wait for the guest's sshd to drop it, "
            "then `upgrader retry`)")


class RemoteForwards:
    """The remote forwards of one guest's connection: asked for on its transport, and again on
    every new transport (a reconnect) by `reopen`. Each one is checked once open: a connection
    from the guest's own side (direct-tcpip to its 127.0.0.1:P, where the guest's sshd allows it)
    must come back to us through the forward. dropbear, asked for a port already taken on
    127.0.0.1, binds ::1 alone and says yes; the check turns that into a ForwardRefused."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.open: dict[int, RemoteForward] = {}  # listen port -> forward
        self._probes: dict[int, tuple[bytes, threading.Event]] = {}

    def add(self, transport: paramiko.Transport, forward: RemoteForward, *, wait_if_taken: float = 0.0) -> None:
        """Ask for `forward`. Refused while something on the guest listens on its port - the
        guest-side session of a killed upgrader, or an operator's `upgrader ssh --twin` with the
        same -R - keep asking up to `wait_if_taken`; refused with the port free (the sshd forbids
        remote forwards): at once."""
        self.open[forward.listen_port] = forward  # looked up by the handler at connect time
        try:
            self._install(transport, forward, wait=0.0, wait_if_taken=wait_if_taken)
        except BaseException:
            self.open.pop(forward.listen_port, None)
            raise

    def reopen(self, transport: paramiko.Transport, *, wait: float) -> None:
        """A new connection: ask for every forward again. `wait`: keep asking this long while one is
        refused (its port may still be held by the guest-side session of the connection that died)."""
        for forward in list(self.open.values()):
            self._install(transport, forward, wait=wait)

    def remove(self, transport: paramiko.Transport | None, forward: RemoteForward) -> bool:
        """Forget `forward` (a connection still reaching its port is closed at once) and ask the
        guest's sshd to stop listening. False: it still listens - dropbear 2022.83 denies every
        cancel-tcpip-forward; the listener goes only with the connection, so the caller drops it."""
        if self.open.pop(forward.listen_port, None) is None:
            return True
        return _cancel(transport, forward)

    def _install(self, transport: paramiko.Transport, forward: RemoteForward, *, wait: float,
                 wait_if_taken: float = 0.0) -> None:
        started = time.monotonic()
        deadline, taken = started + wait, False
        port = forward.listen_port
        while True:
            try:
                transport.request_port_forward("127.0.0.1", port, handler=self._handle)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if not transport.is_active():  # the connection died (a guest going down): not a refusal
                    raise ConnectionLost(f"connection to {self.where} lost while asking for the forward "
                                         f"{forward.describe()}: {exc}") from exc
                if not taken and wait_if_taken > 0 and _listening(transport, port):
                    taken, deadline = True, max(deadline, started + wait_if_taken)
                if time.monotonic() >= deadline:
                    raise ForwardRefused(f"{self.where} refused a remote forward on its 127.0.0.1:{port} to "
                                         f"{forward.host}:{forward.port} (the package proxy): {exc}"
                                         + (_held(wait_if_taken) if taken else "")) from exc
                time.sleep(1)
                continue
            if self._reaches_us(transport, forward) is not False:
                break
            _cancel(transport, forward)  # dropbear said yes, but bound ::1 alone: the port is taken
            if not taken:
                taken, deadline = True, max(deadline, started + wait_if_taken)
            if time.monotonic() >= deadline:
                raise ForwardRefused(f"{self.where} accepted a remote forward on its 127.0.0.1:{port}, but a "
                                     "connection there does not come through it: the port is in use on the guest"
                                     + (_held(wait_if_taken) if wait_if_taken > 0 else ""))
            time.sleep(1)
        log.info("remote forward %s open on %s", forward.describe(), self.where)

    def _reaches_us(self, transport: paramiko.Transport, forward: RemoteForward) -> bool | None:
        """Does a connection to the guest's 127.0.0.1:P come back through the forward? None: the
        guest's sshd refuses direct-tcpip (local forwarding), so it cannot be told."""
        token, seen = b"upgrader-forward-check-" + secrets.token_hex(8).encode(), threading.Event()
        self._probes[forward.listen_port] = (token, seen)
        try:
            try:
                channel = transport.open_channel("direct-tcpip", ("127.0.0.1", forward.listen_port), ("127.0.0.1", 0),
                                                 timeout=CHECK_TIMEOUT)
            except (paramiko.SSHException, OSError, EOFError):
                return None
            try:
                channel.sendall(token)
                return seen.wait(CHECK_TIMEOUT)
            finally:
                with suppress(paramiko.SSHException, OSError, EOFError):
                    channel.close()
        finally:
            self._probes.pop(forward.listen_port, None)

    def _handle(self, channel: paramiko.Channel, origin: object, server: tuple[str, int]) -> None:
        port = int(server[1])
        target = self.open.get(port)
        if target is None:
            channel.close()
            return
        threading.Thread(target=self._accept, args=(channel, target, self._probes.get(port)), daemon=True,
                         name=f"forward-{port}").start()

    @staticmethod
    def _accept(channel: paramiko.Channel, target: RemoteForward, probe: tuple[bytes, threading.Event] | None) -> None:
        preface = b""
        if probe is not None:  # a check is under way: is this its connection?
            token, seen = probe
            with suppress(socket.timeout, OSError, EOFError, paramiko.SSHException):
                channel.settimeout(CHECK_TIMEOUT)
                while len(preface) < len(token) and token.startswith(preface):
                    chunk = channel.recv(len(token) - len(preface))
                    if not chunk:
                        break
                    preface += chunk
            if preface == token:
                seen.set()
                with suppress(OSError, EOFError, paramiko.SSHException):
                    channel.close()
                return
            channel.settimeout(None)
        _serve(channel, target, preface)


def _cancel(transport: paramiko.Transport | None, forward: RemoteForward) -> bool:
    """cancel-tcpip-forward, answered and bounded (not paramiko's cancel_port_forward: it waits
    for the answer without a timeout, and it drops the transport's one handler, which the other
    forwards still need)."""
    if transport is None or not transport.is_active():
        return True  # the listener went with the connection
    try:
        return transport.global_request("cancel-tcpip-forward", ("127.0.0.1", forward.listen_port), wait=True) is not None
    except (paramiko.SSHException, OSError, EOFError):
        return not transport.is_active()


def _serve(channel: paramiko.Channel, target: RemoteForward, preface: bytes = b"") -> None:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        log.warning("package proxy %s:%s unreachable: %s", target.host, target.port, why)
        _refuse(channel, target, why)
        return
    sock.settimeout(None)
    if preface:
        with suppress(OSError):
            sock.sendall(preface)
    threading.Thread(target=_channel_to_socket, args=(channel, sock), daemon=True).start()
    _socket_to_channel(sock, channel)


def refusal(target: RemoteForward, why: str) -> bytes:
    """The HTTP answer a guest gets when the target does not answer from the orchestrator."""
    reason = f"upgrader: package proxy {target.host}:{target.port} unreachable ({why})"
    body = (f"{reason}\nThe twin reaches the package proxy only through upgrader's SSH forward; the proxy itself "
            f"does not answer at {target.host}:{target.port} from the orchestrator. Start it, or fix staging.packages.proxy.\n")
    return (f"HTTP/1.0 502 {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body.encode())}\r\n"
            f"Connection: close\r\n\r\n{body}").encode()


def _refuse(channel: paramiko.Channel, target: RemoteForward, why: str) -> None:
    with suppress(OSError, EOFError, paramiko.SSHException):
        channel.settimeout(REQUEST_READ)
        seen = b""
        with suppress(socket.timeout):
            while b"\r\n\r\n" not in seen and len(seen) < 65536:
                chunk = channel.recv(4096)
                if not chunk:
                    break
                seen += chunk
        channel.sendall(refusal(target, why))
    with suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()


def _channel_to_socket(channel: paramiko.Channel, sock: socket.socket) -> None:
    try:
        while data := channel.recv(_BUFFER):
            sock.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _socket_to_channel(sock: socket.socket, channel: paramiko.Channel) -> None:
    try:
        while data := sock.recv(_BUFFER):
            channel.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        with suppress(OSError, EOFError, paramiko.SSHException):
            channel.shutdown_write()
        with suppress(OSError, EOFError, paramiko.SSHException):
            channel.close()
        with suppress(OSError):
            sock.close()
