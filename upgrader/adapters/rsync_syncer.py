"""The Syncer port: rsync between two guests that cannot reach each other.

rsync runs on the *target* guest and pulls from the *source* over SSH, through channels the
orchestrator holds open: a direct-tcpip channel over the source's SSH connection to the source's own
sshd (127.0.0.1:22 there), and a remote forward on the target's SSH connection back to it. The
networks never join. The key rsync uses is generated on the target for this one sync, its public
half authorised on the source with a marker comment, and both are removed afterwards (stale ones
from a crashed run are removed first).
"""

from __future__ import annotations

import random
import re
import shlex
import threading
import time
from typing import TYPE_CHECKING, Sequence

import paramiko

from upgrader.errors import InfraError, StepFailed
from upgrader.ports import SIGNALLED, Command, OutputSink, Result, SyncStats, cmd

if TYPE_CHECKING:
    from upgrader.adapters.fabric_shell import FabricShell, FabricShells

MARKER = "upgrader-sync"
WORKDIR = "/root/.upgrader-sync"
VANISHED = 24  # "some files vanished before they could be transferred": fine while prod serves

# the key pair, made on the target with whichever tool it has; prints the public key
KEYGEN = (
    "umask 077; rm -rf {dir} && mkdir -p {dir} && "
    "if command -v ssh-keygen >/dev/null; then ssh-keygen -q -t ed25519 -N '' -C {marker} -f {dir}/key && cat {dir}/key.pub; "
    "else dropbearkey -t ed25519 -f {dir}/key >/dev/null 2>&1 && dropbearkey -y -f {dir}/key | grep '^ssh-'; fi"
)
AUTHORIZE = (
    "umask 077; mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && "
    "grep -v {marker} ~/.ssh/authorized_keys > ~/.ssh/authorized_keys.upgrader; "
    "printf '%s\\n' {line} >> ~/.ssh/authorized_keys.upgrader && mv ~/.ssh/authorized_keys.upgrader ~/.ssh/authorized_keys"
)
DEAUTHORIZE = (
    "touch ~/.ssh/authorized_keys && grep -v {marker} ~/.ssh/authorized_keys > ~/.ssh/authorized_keys.upgrader; "
    "mv ~/.ssh/authorized_keys.upgrader ~/.ssh/authorized_keys"
)

RSYNC_ATTEMPTS = 3
# rsync's exit codes for a transfer cut short: socket I/O, protocol stream, signal, timeouts, ssh
_CUT_SHORT = {10, 12, 20, 30, 35, 255}


def transient(rc: int) -> bool:
    return rc in _CUT_SHORT or rc == SIGNALLED or rc > 128  # > 128: the shell saw rsync die of a signal


_STATS = {
    "files": re.compile(r"Number of regular files transferred:\s*([\d,.]+)"),
    "deleted": re.compile(r"Number of deleted files:\s*([\d,.]+)"),
    "bytes": re.compile(r"Total transferred file size:\s*([\d,.]+)"),
}


def parse_stats(text: str) -> tuple[int, int]:
    """(files changed incl. deletions, bytes transferred) from `rsync --stats` output."""
    values = {}
    for key, pattern in _STATS.items():
        match = pattern.search(text)
        values[key] = int(re.sub(r"[,.]", "", match.group(1))) if match else 0
    return values["files"] + values["deleted"], values["bytes"]


class RsyncSyncer:
    def __init__(self, shells: "FabricShells", run_id: str) -> None:
        self.shells, self.run_id = shells, run_id

    def sync(
        self,
        source: str,
        target: str,
        paths: Sequence[tuple[str, Sequence[str]]],
        *,
        final: bool,
        on_output: OutputSink | None = None,
    ) -> SyncStats:
        src, dst = self.shells.connect(source), self.shells.connect(target)
        marker = f"{MARKER}-{self.run_id}"
        workdir = f"{WORKDIR}/{self.run_id}"
        started = time.monotonic()
        public = self._keygen(dst, workdir)
        line = f'no-pty,no-agent-forwarding,no-X11-forwarding,no-port-forwarding {public} {marker}'
        _must(src, Command.raw(AUTHORIZE.format(marker=shlex.quote(MARKER), line=shlex.quote(line))), "authorising the sync key")
        try:
            files, size, rc = self._transfer(src, dst, workdir, paths, final, on_output)
        finally:
            src.run(Command.raw(DEAUTHORIZE.format(marker=shlex.quote(MARKER))), timeout=60)
            dst.run(cmd("rm -rf {}", workdir), timeout=60)
        return SyncStats(files=files, bytes=size, seconds=round(time.monotonic() - started, 3), rc=rc)

    def _keygen(self, dst: "FabricShell", workdir: str) -> str:
        result = _must(dst, Command.raw(KEYGEN.format(dir=shlex.quote(workdir), marker=MARKER)), "making the sync key")
        public = result.stdout.strip().splitlines()[-1:]
        if not public or not public[0].startswith("ssh-"):
            raise StepFailed(f"no public key from the key generator on {dst.name}: {result.tail()}",
                             hint="the target needs ssh-keygen (OpenSSH) or dropbearkey")
        return " ".join(public[0].split()[:2])

    @staticmethod
    def _rsync(dst: "FabricShell", command: Command, on_output: OutputSink | None) -> Result:
        """rsync is idempotent: a pass cut short (killed, connection reset, timeout) is run again."""
        for attempt in range(1, RSYNC_ATTEMPTS + 1):
            result = dst.run(command, timeout=24 * 3600, on_output=on_output)
            if not transient(result.rc) or attempt == RSYNC_ATTEMPTS:
                return result
            if on_output:
                on_output(f"upgrader: rsync exited {result.rc} (cut short); running it again ({attempt + 1} of {RSYNC_ATTEMPTS})")
        raise AssertionError("unreachable")

    def _transfer(self, src: "FabricShell", dst: "FabricShell", workdir: str, paths: Sequence[tuple[str, Sequence[str]]],
                  final: bool, on_output: OutputSink | None) -> tuple[int, int, int]:
        user = src.target.user
        src_transport = src.ensure().client.get_transport()
        dst_transport = dst.ensure().client.get_transport()
        if src_transport is None or dst_transport is None:
            raise InfraError("SSH connection closed before the sync could start")
        remote_port = _forward(dst_transport, src_transport)
        try:
            # The tunnel ends at the source's own sshd through the orchestrator's pinned connection,
            # so the guest-side client need not pin again (dbclient cannot take an alias anyway).
            if dst.run(Command("command -v ssh >/dev/null"), timeout=30).ok:
                client = (f"ssh -p {remote_port} -i {workdir}/key -o BatchMode=yes -o StrictHostKeyChecking=no "
                          "-o UserKnownHostsFile=/dev/null")
            else:
                client = f"dbclient -y -p {remote_port} -i {workdir}/key"
            wrapper = f"{workdir}/rsh"
            script = f'#!/bin/sh\nHOME={workdir}; export HOME\nexec {client} "$@"\n'
            _must(dst, cmd("printf %s {} > {} && chmod 700 {}", script, wrapper, wrapper), "writing the rsync remote shell")
            files = size = worst = 0
            for path, excludes in paths:
                folder = path.rstrip("/") + "/"
                args = ["rsync", "-aH", "--delete", "--numeric-ids", "--stats", "-e", wrapper]
                args += [f"--exclude={e}" for e in excludes]
                args += [f"{user}@127.0.0.1:{folder}", folder]
                result = self._rsync(dst, Command(" ".join(shlex.quote(a) for a in args)), on_output)
                if result.rc != 0 and not (result.rc == VANISHED and not final):
                    raise StepFailed(f"rsync of {folder} {src.name} -> {dst.name} exited {result.rc}:\n{result.tail()}",
                                     hint="a final pass must exit 0; nothing was switched over")
                f, b = parse_stats(result.stdout)
                files, size, worst = files + f, size + b, max(worst, result.rc)
            return files, size, worst
        finally:
            if dst_transport.is_active():
                dst_transport.cancel_port_forward("127.0.0.1", remote_port)


def _forward(dst: paramiko.Transport, src: paramiko.Transport) -> int:
    """Ask the target's sshd to listen on its 127.0.0.1:R; every connection to it becomes a
    direct-tcpip channel to the source's own 127.0.0.1:22 over the source's SSH connection.
    A random high port, retried if it is taken."""

    def handle(channel: paramiko.Channel, origin: object, server: object) -> None:
        try:
            peer = src.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=30)
        except (paramiko.SSHException, OSError):
            channel.close()
            return
        threading.Thread(target=_copy, args=(channel, peer), daemon=True).start()
        threading.Thread(target=_copy, args=(peer, channel), daemon=True).start()

    for _ in range(10):
        port = random.randint(20000, 60000)
        try:
            dst.request_port_forward("127.0.0.1", port, handler=handle)
            return port
        except paramiko.SSHException:
            continue
    raise InfraError("the target refused a remote port forward", hint="its sshd must allow remote forwarding (dropbear: no -k)")


def _copy(read: paramiko.Channel, write: paramiko.Channel) -> None:
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


def _must(shell: "FabricShell", command: Command, what: str) -> Result:
    result = shell.run(command, timeout=120)
    if not result.ok:
        raise StepFailed(f"{what} on {shell.name}: `{command.short()}` exited {result.rc}:\n{result.tail()}")
    return result
