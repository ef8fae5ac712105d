"""Remote forwards on a paramiko transport (the Shell port's `forward`): the guest's sshd listens
on its 127.0.0.1:P and hands each connection to us as a `forwarded-tcpip` channel; we join it to
the target (a package proxy) with a TCP connection made from the orchestrator. The guest gets no
route: it reaches that one host:port and nothing else, only while the forward is open.

A target that does not answer is not a hang on the guest: the channel is answered with an HTTP
502 whose reason names the proxy and why (apt: `502 upgrader: package proxy 127.0.0.1:3142
unreachable (Connection refused)`; busybox wget: `server returned error: HTTP/1.0 502 ...`).

paramiko keeps ONE handler per transport for every remote forward (`Transport._tcp_handler`), so
`install` sets a handler that dispatches on the listening port; the sync's own forward (rsync_syncer)
replaces it for its duration, which never overlaps the package forward (upgrade/validate run
before presync)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import suppress
from typing import Mapping

import paramiko

from upgrader.errors import ForwardRefused
from upgrader.ports import RemoteForward

log = logging.getLogger("upgrader.forward")

CONNECT_TIMEOUT = 10.0  # the orchestrator's connection to the target (a proxy that does not answer)
REQUEST_READ = 5.0  # how long the 502 answer waits for the client's request headers first
_BUFFER = 65536


def install(transport: paramiko.Transport, forward: RemoteForward, forwards: Mapping[int, RemoteForward],
            where: str, *, wait: float = 0.0) -> None:
    """Ask the guest's sshd for `forward`; every connection to a port in `forwards` (looked up at
    connect time) is joined to its target. `wait`: keep asking this long while it is refused (the
    port may still be held by the guest-side session of a connection that just died)."""
    deadline = time.monotonic() + wait

    def handle(channel: paramiko.Channel, origin: object, server: tuple[str, int]) -> None:
        target = forwards.get(int(server[1]))
        if target is None:
            channel.close()
            return
        threading.Thread(target=_serve, args=(channel, target), daemon=True, name=f"forward-{target.listen_port}").start()

    while True:
        try:
            transport.request_port_forward("127.0.0.1", forward.listen_port, handler=handle)
            log.info("remote forward %s open on %s", forward.describe(), where)
            return
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if time.monotonic() >= deadline:
                raise ForwardRefused(f"{where} refused a remote forward on its 127.0.0.1:{forward.listen_port} "
                                     f"to {forward.host}:{forward.port} (the package proxy): {exc}") from exc
            time.sleep(1)


def remove(transport: paramiko.Transport | None, forward: RemoteForward) -> None:
    if transport is not None and transport.is_active():
        with suppress(paramiko.SSHException, OSError, EOFError):
            transport.cancel_port_forward("127.0.0.1", forward.listen_port)


def _serve(channel: paramiko.Channel, target: RemoteForward) -> None:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        log.warning("package proxy %s:%s unreachable: %s", target.host, target.port, why)
        _refuse(channel, target, why)
        return
    sock.settimeout(None)
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
