"""An open sync of the rsync adapter (Syncer.open in rsync_syncer.py): the key authorised, the
remote forward up and the rsh wrapper written, so a pass is only rsync; `close` takes it down."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import paramiko

from upgrader.errors import InfraError
from upgrader.ports import OutputSink, SyncStats

if TYPE_CHECKING:
    from upgrader.adapters.fabric_shell import FabricShell
    from upgrader.adapters.rsync_syncer import RsyncSyncer


class RsyncSession:
    """One open sync (RsyncSyncer.open): its key is authorised on the source and the tunnel is up
    until `close()`, so each `pass_` is only rsync. Lives in this process only: a key a killed
    process left behind goes with the next sync's authorisation or a `sweep`."""

    def __init__(self, syncer: "RsyncSyncer", src: "FabricShell", dst: "FabricShell", key_id: str,
                 paths: list[tuple[str, Sequence[str]]], on_output: OutputSink | None) -> None:
        self.syncer, self.src, self.dst, self.key_id, self.paths, self.on_output = syncer, src, dst, key_id, paths, on_output
        self.keydir = f"{syncer.workdir}/{key_id}"
        self.serve_path = f"{syncer.workdir}/{key_id}.serve"
        self.transport: paramiko.Transport | None = None
        self.remote_port = 0
        self.wrapper = ""
        self.closed = False
        self.key_left = False

    def pass_(self, *, final: bool, on_output: OutputSink | None = None) -> SyncStats:
        if self.closed or self.transport is None:
            raise InfraError(f"sync session {self.key_id} is {'closed' if self.closed else 'not open'}: no pass through it")
        started = time.monotonic()
        files, size, rc = self.syncer._transfer(self.src, self.dst, self.wrapper, self.paths, final, on_output)
        return SyncStats(files=files, bytes=size, seconds=round(time.monotonic() - started, 3), rc=rc, key_id=self.key_id)

    def close(self) -> bool:
        """Cancel the forward, remove the key line, its forced command and the key pair; bounded
        and never raising (see `_cleanup`). Idempotent. True when the key line is gone."""
        if self.closed:
            return not self.key_left
        self.closed = True
        if self.transport is not None:
            unforward(self.transport, self.remote_port)
        self.key_left = not self.syncer._cleanup(self.src, self.dst, self.key_id, self.keydir, self.serve_path, self.on_output)
        return not self.key_left


def unforward(transport: paramiko.Transport, port: int) -> None:
    try:
        if transport.is_active():
            transport.cancel_port_forward("127.0.0.1", port)
    except (paramiko.SSHException, OSError, EOFError):
        pass  # the connection is gone, and its forward with it
