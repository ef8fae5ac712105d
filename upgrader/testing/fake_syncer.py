"""The fake Syncer and its sessions (the Syncer port in upgrader/ports.py), on the fake world of
upgrader/testing/fakes.py: the sync key lives in guest["authorized_sync_keys"] (the source's)
and guest["sync_key_pairs"] (the target's); effects `sync_open`, `sync` (a pass),
`sync_revoke` (the key line) and `sync_close` (the key pair)."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import replace
from typing import Sequence

from upgrader.errors import ConnectionLost, InfraError, StepFailed
from upgrader.ports import OutputSink, Result, SyncStats
from upgrader.testing.fake_commands import UnexpectedCall
from upgrader.testing.fakes import FakeShells, _guest_of
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import WorldFile, effect

__all__ = ["FakeSyncSession", "FakeSyncer"]


class FakeSyncer:
    """Copies the source guest's mail to the target. Like the real one `open` authorises a key on
    the source (guest["authorized_sync_keys"], after dropping any a killed sync left) and a key
    pair made on the target (guest["sync_key_pairs"]; effect `sync_open`), each pass copies
    (effect `sync`) through the tunnel of the connections `shells` had at the open (another
    connection since: ConnectionLost, as the real one), `revoke` removes the key from the machine
    the source role reaches then (effect `sync_revoke`): if that is no longer the guest it was
    authorised on (a takeover came between), the key stays and revoke says so; `close` revokes and
    removes the key pair from the target (effect `sync_close`). `sync` is open + pass + close, and
    removes the key also when the connection is lost; a process killed at the pause point
    `during:sync:pass|final` or `after:sync_open[:session]` leaves it for the next sync or `sweep`.
    Faults: `sync:open`, `sync:pass|final` (rsync exits 23), `sync:revoke` (the key line's removal
    fails), `sweep:ROLE` (ROLE does not answer a sweep)."""

    MARKER = "upgrader-sync"
    SETUP_SECONDS = 0.4  # what a real open costs (issue 14: most of a 1.1-1.5 s final sync was set-up)
    CLOSE_SECONDS = 0.1

    def __init__(self, world: WorldFile, networks: dict[str, str], run_id: str = "fake-run",
                 shells: FakeShells | None = None) -> None:
        self.world, self.networks, self.run_id = world, networks, run_id
        self.shells = shells if shells is not None else FakeShells(world, networks)

    def _network(self, role: str) -> str:
        if role not in self.networks:
            raise ValueError(f"fake: unknown role {role!r}; known: {', '.join(self.networks)}")
        return self.networks[role]

    def open(self, source: str, target: str, paths: Sequence[tuple[str, Sequence[str]]], *,
             on_output: OutputSink | None = None) -> "FakeSyncSession":
        """Pause point `after:sync_open:session` (a session's open; `sync`'s own: `after:sync_open`)."""
        return self._open(source, target, "after:sync_open:session")

    def _open(self, source: str, target: str, point: str) -> "FakeSyncSession":
        if "sync:open" in self.world.read()["faults"]:
            raise StepFailed(f"fake: authorising the sync key on {source} exited 3 (fault)")
        key_id = f"{self.MARKER}-{self.run_id}-{uuidlib.uuid4().hex[:8]}"
        connections = (self.shells.connection(source), self.shells.connection(target))
        with self.world.change() as world:
            _, dst = _guest_of(world, self._network(target))
            dst["sync_key_pairs"] = [key_id]  # the key pairs of killed syncs go first
            guest_id = world["domains"][_guest_of(world, self._network(source))[0]]["guest"]
            world["guests"][guest_id]["authorized_sync_keys"] = [key_id]  # stale ones of killed syncs go first
            effect(world, "sync_open", source=source, target=target, key_id=key_id)
        maybe_pause(point)
        return FakeSyncSession(self, source, target, key_id, guest_id, connections)

    def sync(
        self,
        source: str,
        target: str,
        paths: Sequence[tuple[str, Sequence[str]]],
        *,
        final: bool,
        on_output: OutputSink | None = None,
    ) -> SyncStats:
        kind = "final" if final else "pass"
        if f"sync:{kind}" in self.world.read()["faults"]:
            result = Result(f"rsync -a {source}:… {target}:…", 23, "", "rsync error: some files could not be transferred (code 23)")
            raise StepFailed(f"fake: rsync from {source} to {target} exited 23:\n{result.tail()}", result=result)
        session = self._open(source, target, "after:sync_open")
        maybe_pause(f"during:sync:{kind}")  # killed here: the key stays (an exception would close it)
        try:
            stats = session.pass_(final=final, on_output=on_output, paused=True)
        finally:
            left = not session.close()
        return replace(stats, key_left=left, setup_seconds=self.SETUP_SECONDS, close_seconds=self.CLOSE_SECONDS)

    def sweep(self, roles: Sequence[str], run_id: str | None = None, *, strict: bool = False) -> int:
        networks = [self._network(role) for role in roles]
        prefix = f"{self.MARKER}-{run_id}-" if run_id is not None else f"{self.MARKER}-"
        removed, silent = 0, []
        with self.world.change() as world:
            for role, network in zip(roles, networks):
                try:
                    if f"sweep:{role}" in world["faults"]:
                        raise InfraError(f"fake: {role} does not answer the sweep (fault)")
                    _, guest = _guest_of(world, network)
                except InfraError:
                    if strict:
                        raise
                    silent.append(role)  # does not answer: 0 for that role
                    continue
                keys = guest.get("authorized_sync_keys", [])
                guest["authorized_sync_keys"] = [k for k in keys if not k.startswith(prefix)]
                removed += len(keys) - len(guest["authorized_sync_keys"])
                guest["sync_key_pairs"] = [k for k in guest.get("sync_key_pairs", []) if not k.startswith(prefix)]
            effect(world, "sweep_keys", roles=list(roles), run_id=run_id, removed=removed, unreachable=silent)
        return removed


class FakeSyncSession:
    """A strict session: a pass after `revoke`/`close` is an UnexpectedCall, a pass when either
    role is on another connection than at the open is ConnectionLost."""

    def __init__(self, syncer: FakeSyncer, source: str, target: str, key_id: str, guest_id: str,
                 connections: tuple[str, str]) -> None:
        self.syncer, self.world, self.source, self.target = syncer, syncer.world, source, target
        self.key_id, self.guest_id, self.connections = key_id, guest_id, connections
        self.revoked = self.closed = self.key_left = False

    def pass_(self, *, final: bool, on_output: OutputSink | None = None, paused: bool = False) -> SyncStats:
        """`paused`: FakeSyncer.sync passed the `during:` pause point already."""
        kind = "final" if final else "pass"
        if self.revoked:
            raise UnexpectedCall(f"fake: a {kind} pass through the closed sync session {self.key_id}")
        shells = self.syncer.shells
        for role, opened in zip((self.source, self.target), self.connections):
            if shells.connection(role) != opened:
                raise ConnectionLost(f"fake: the sync session {self.key_id}'s tunnel went with its connection to {role} "
                                     "(reconnected since the open)")
        if f"sync:{kind}" in self.world.read()["faults"]:
            result = Result(f"rsync -a {self.source}:… {self.target}:…", 23, "", "rsync error: some files could not be transferred (code 23)")
            raise StepFailed(f"fake: rsync from {self.source} to {self.target} exited 23:\n{result.tail()}", result=result)
        if not paused:
            maybe_pause(f"during:sync:{kind}")
        networks = self.syncer.networks
        with self.world.change() as world:
            _, src = _guest_of(world, networks[self.source])
            _, dst = _guest_of(world, networks[self.target])
            if self.key_id not in src.get("authorized_sync_keys", []):
                raise StepFailed(f"fake: rsync from {self.source}: the sync key {self.key_id} is not authorised there "
                                 "(swept, or another machine answers)")
            passes = sum(1 for e in world["effects"] if e["op"] == "sync")
            incoming = world["incoming"]
            if src["services"] and not final and passes < len(incoming):
                start = len(src["mail"])
                src["mail"].extend(f"m{start + i}-p{passes}" for i in range(incoming[passes]))
            new = sorted(set(src["mail"]) - set(dst["mail"]))
            gone = set(dst["mail"]) - set(src["mail"])
            dst["mail"] = list(src["mail"])
            files = len(new) + len(gone)
            effect(world, "sync", source=self.source, target=self.target, final=final, files=files)
            drops = world.setdefault("sync_drops", [])  # "final"/"pass": lose the connection after syncing
            lost = kind in drops
            if lost:
                drops.remove(kind)
        if lost:
            shells.replace_connection(self.target)
            raise ConnectionLost(f"fake: connection to {self.target} lost during rsync")
        if on_output:
            on_output(f"sent {files} files")
        maybe_pause(f"after:sync:{kind}")
        return SyncStats(files=files, bytes=files * 2048, seconds=round(0.01 + files * 0.001, 3), key_id=self.key_id)

    def revoke(self) -> bool:
        if self.revoked:
            return not self.key_left
        self.revoked = True
        with self.world.change() as world:
            if "sync:revoke" in world["faults"]:
                self.key_left = True
                effect(world, "sync_revoke", source=self.source, key_id=self.key_id, left=True)
                return False
            try:
                name, _ = _guest_of(world, self.syncer.networks[self.source])
                reached = world["domains"][name]["guest"] == self.guest_id
            except InfraError:
                reached = False
            keys = world["guests"].get(self.guest_id, {}).get("authorized_sync_keys", [])
            if reached and self.key_id in keys:
                keys.remove(self.key_id)
            self.key_left = self.key_id in keys
            effect(world, "sync_revoke", source=self.source, key_id=self.key_id, left=self.key_left)
        return not self.key_left

    def close(self) -> bool:
        gone = self.revoke()
        if self.closed:
            return gone
        self.closed = True
        with self.world.change() as world:
            try:
                _, dst = _guest_of(world, self.syncer.networks[self.target])
                pairs = dst.get("sync_key_pairs", [])
                if self.key_id in pairs:
                    pairs.remove(self.key_id)
                pair_left = False
            except InfraError:
                pair_left = True
            effect(world, "sync_close", target=self.target, key_id=self.key_id, left=self.key_left, pair_left=pair_left)
        return gone
