"""The sync's tunnel (rsync_syncer.py): the source's own sshd reached over the source's SSH
connection (direct-tcpip), a remote forward on the target's SSH connection back to it, and its
cancel. The networks never join."""

from __future__ import annotations

import random
import socket
import threading
from typing import TYPE_CHECKING, Callable

import paramiko

from upgrader.errors import InfraError

if TYPE_CHECKING:
    from upgrader.adapters.fabric_shell import FabricShell


def sshd_banner(src: "FabricShell", port: int) -> str:
    """The identification line of the sshd the sync key will meet: the source's own
    127.0.0.1:`port`, reached like the sync reaches it (direct-tcpip over the source's connection)."""
    transport = src.ensure().client.get_transport()
    where = f"127.0.0.1:{port} on {src.name}"
    if transport is None:
        raise InfraError(f"SSH connection to {src.name} closed before the sync could start")
    try:
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=30)
    except (paramiko.SSHException, OSError) as exc:
        raise InfraError(f"the sync cannot reach the source's sshd at {where}: {exc}",
                         hint="the source's sshd must listen on 127.0.0.1 and allow TCP forwarding (dropbear: no -j)") from exc
    data = b""
    try:
        channel.settimeout(15)
        while b"\n" not in data and len(data) < 512:
            chunk = channel.recv(512)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, OSError, paramiko.SSHException):
        pass
    finally:
        channel.close()
    banner = next((line for line in data.decode("ascii", "replace").splitlines() if line.startswith("SSH-")), "")
    if not banner:
        raise InfraError(f"no SSH banner from {where} (got {data[:80]!r})", hint="the sync tunnels to the source's own sshd there")
    return banner


def forward(dst: paramiko.Transport, src: paramiko.Transport, sshd_port: int = 22,
            carry: Callable[[], bool] = lambda: True) -> int:
    """Ask the target's sshd to listen on its 127.0.0.1:R; every connection to it becomes a
    direct-tcpip channel to the source's own 127.0.0.1:`sshd_port` over the source's SSH connection,
    while `carry()` says so (after it: closed at once; dropbear keeps listening after a cancel, until
    the connection goes). A random high port, retried if it is taken."""

    def handle(channel: paramiko.Channel, origin: object, server: object) -> None:
        if not carry():
            channel.close()
            return
        try:
            peer = src.open_channel("direct-tcpip", ("127.0.0.1", sshd_port), ("127.0.0.1", 0), timeout=30)
        except (paramiko.SSHException, OSError):
            channel.close()
            return
        threading.Thread(target=copy_until_eof, args=(channel, peer), daemon=True).start()
        threading.Thread(target=copy_until_eof, args=(peer, channel), daemon=True).start()

    for _ in range(10):
        port = random.randint(20000, 60000)
        try:
            dst.request_port_forward("127.0.0.1", port, handler=handle)
            return port
        except paramiko.SSHException:
            continue
    raise InfraError("the target refused a remote port forward", hint="its sshd must allow remote forwarding (dropbear: no -k)")


def copy_until_eof(read: paramiko.Channel, write: paramiko.Channel) -> None:
    try:
        while True:
            data = read.recv(65536)
            if not data:
                break
            write.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        try:
            write.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass


def unforward(transport: paramiko.Transport, port: int) -> None:
    """cancel-tcpip-forward, not waiting for the answer: paramiko's cancel_port_forward waits
    without a timeout (5.1.0), so a hung connection would hold the caller. The request goes out
    before anything sent after it on the same connection, and the listener goes with the
    connection at the latest."""
    try:
        if transport.is_active():
            transport.global_request("cancel-tcpip-forward", ("127.0.0.1", port), wait=False)
    except (paramiko.SSHException, OSError, EOFError):
        pass  # the connection is gone, and its forward with it
