"""An open sync of the rsync adapter (Syncer.open in rsync_syncer.py): the key authorised, the
remote forward up and the rsh wrapper written, so a pass is only rsync; `revoke` takes the key
line off the source (one command), `close` the key pair off the target as well."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import paramiko

from upgrader.adapters.rsync_tunnel import unforward
from upgrader.errors import ConnectionLost, InfraError
from upgrader.ports import OutputSink, SyncStats

if TYPE_CHECKING:
    from upgrader.adapters.fabric_shell import FabricShell
    from upgrader.adapters.rsync_syncer import RsyncSyncer


class RsyncSession:
    """One open sync (RsyncSyncer.open): its key is authorised on the source and the tunnel is up
    until `revoke()`/`close()`, so each `pass_` is only rsync. The tunnel lives on the two SSH
    connections of the moment it was opened (`src_transport`, `transport`): once either shell
    is on another connection (a reconnect, a reset) a pass raises ConnectionLost, so the caller
    closes this session and opens a new one. Lives in this process only: a key a killed process
    left behind goes with the next sync's authorisation or a `sweep`."""

    def __init__(self, syncer: "RsyncSyncer", src: "FabricShell", dst: "FabricShell", key_id: str,
                 paths: list[tuple[str, Sequence[str]]], on_output: OutputSink | None) -> None:
        self.syncer, self.src, self.dst, self.key_id, self.paths, self.on_output = syncer, src, dst, key_id, paths, on_output
        self.keydir = f"{syncer.workdir}/{key_id}"
        self.serve_path = f"{syncer.workdir}/{key_id}.serve"
        self.transport: paramiko.Transport | None = None  # the target's, holding the remote forward
        self.src_transport: paramiko.Transport | None = None  # the source's, carrying the forward's channels
        self.remote_port = 0
        self.wrapper = ""
        self.revoked = False
        self.closed = False
        self.key_left = False

    def tunnel_lost(self) -> str | None:
        """Why the tunnel can no longer carry a pass (None: it can)."""
        for shell, transport in ((self.src, self.src_transport), (self.dst, self.transport)):
            if transport is None or not transport.is_active():
                return f"its connection to {shell.name} is closed"
            current = shell.conn.client.get_transport() if shell.conn is not None else None
            if current is not transport:
                return f"{shell.name} is on another connection since the sync was opened"
        return None

    def check_tunnel(self) -> None:
        why = self.tunnel_lost()
        if why is not None:
            raise ConnectionLost(f"the sync session {self.key_id}'s tunnel went with its connection: {why}",
                                 hint="the session is closed and a new one opened (key, tunnel) before the pass is redone")

    def pass_(self, *, final: bool, on_output: OutputSink | None = None) -> SyncStats:
        if self.revoked or self.transport is None:
            raise InfraError(f"sync session {self.key_id} is {'closed' if self.revoked else 'not open'}: no pass through it")
        self.check_tunnel()
        started = time.monotonic()
        files, size, rc = self.syncer._transfer(self.src, self.dst, self.wrapper, self.paths, final, on_output,
                                                alive=self.check_tunnel)
        return SyncStats(files=files, bytes=size, seconds=round(time.monotonic() - started, 3), rc=rc, key_id=self.key_id)

    def revoke(self) -> bool:
        """The key line and its forced command off the source (one command: the only clean-up
        that must come before the source leaves), then the forward cancelled without waiting for
        the answer (it goes with the connection anyway). Bounded, never raising (see
        `_remove`), idempotent; an interrupt inside leaves `key_left` True. True when the
        key line is gone."""
        if self.revoked:
            return not self.key_left
        self.revoked = self.key_left = True
        self.key_left = not self.syncer._revoke(self.src, self.key_id, self.serve_path, self.on_output)
        if self.transport is not None:
            unforward(self.transport, self.remote_port)
        return not self.key_left

    def close(self) -> bool:
        """`revoke` (unless done), then the key pair off the target. Bounded, never raising,
        idempotent. True when the key line is gone from the source."""
        gone = self.revoke()
        if not self.closed:
            self.closed = True
            self.syncer._remove_keypair(self.dst, self.key_id, self.keydir, self.on_output)
        return gone
