"""The fake Syncer and its sessions (the Syncer port in upgrader/ports.py), on the fake world of
upgrader/testing/fakes.py: the sync key lives in guest["authorized_sync_keys"]; effects
`sync_open`, `sync` (a pass) and `sync_close`."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import replace
from typing import Sequence

from upgrader.errors import ConnectionLost, InfraError, StepFailed
from upgrader.ports import OutputSink, Result, SyncStats
from upgrader.testing.fake_commands import UnexpectedCall
from upgrader.testing.fakes import _guest_of
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import WorldFile, effect

__all__ = ["FakeSyncSession", "FakeSyncer"]


class FakeSyncer:
    """Copies the source guest's mail to the target. Like the real one `open` authorises a key on
    the source (guest["authorized_sync_keys"], after dropping any a killed sync left; effect
    `sync_open`), each pass copies (effect `sync`), and `close` removes the key from the machine
    the source role reaches then (effect `sync_close`): if that is no longer the guest it was
    authorised on (a takeover came between), the key stays and close says so. `sync` is open +
    pass + close, and removes the key also when the connection is lost; a process killed at the
    pause point `during:sync:pass|final` or `after:sync_open` leaves it for the next sync or `sweep`."""

    MARKER = "upgrader-sync"

    def __init__(self, world: WorldFile, networks: dict[str, str], run_id: str = "fake-run") -> None:
        self.world, self.networks, self.run_id = world, networks, run_id

    def _network(self, role: str) -> str:
        if role not in self.networks:
            raise ValueError(f"fake: unknown role {role!r}; known: {', '.join(self.networks)}")
        return self.networks[role]

    def open(self, source: str, target: str, paths: Sequence[tuple[str, Sequence[str]]], *,
             on_output: OutputSink | None = None) -> "FakeSyncSession":
        if "sync:open" in self.world.read()["faults"]:
            raise StepFailed(f"fake: authorising the sync key on {source} exited 3 (fault)")
        key_id = f"{self.MARKER}-{self.run_id}-{uuidlib.uuid4().hex[:8]}"
        with self.world.change() as world:
            _guest_of(world, self._network(target))
            guest_id = world["domains"][_guest_of(world, self._network(source))[0]]["guest"]
            world["guests"][guest_id]["authorized_sync_keys"] = [key_id]  # stale ones of killed syncs go first
            effect(world, "sync_open", source=source, target=target, key_id=key_id)
        maybe_pause("after:sync_open")
        return FakeSyncSession(self, source, target, key_id, guest_id)

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
        session = self.open(source, target, paths, on_output=on_output)
        maybe_pause(f"during:sync:{kind}")  # killed here: the key stays (an exception would close it)
        try:
            stats = session.pass_(final=final, on_output=on_output, paused=True)
        finally:
            left = not session.close()
        return replace(stats, key_left=left)

    def sweep(self, roles: Sequence[str], run_id: str | None = None, *, strict: bool = False) -> int:
        networks = [self._network(role) for role in roles]
        prefix = f"{self.MARKER}-{run_id}-" if run_id is not None else f"{self.MARKER}-"
        removed, silent = 0, []
        with self.world.change() as world:
            for role, network in zip(roles, networks):
                try:
                    _, guest = _guest_of(world, network)
                except InfraError:
                    if strict:
                        raise
                    silent.append(role)  # does not answer: 0 for that role
                    continue
                keys = guest.get("authorized_sync_keys", [])
                guest["authorized_sync_keys"] = [k for k in keys if not k.startswith(prefix)]
                removed += len(keys) - len(guest["authorized_sync_keys"])
            effect(world, "sweep_keys", roles=list(roles), run_id=run_id, removed=removed, unreachable=silent)
        return removed


class FakeSyncSession:
    """A strict session: a pass after `close` is an UnexpectedCall."""

    def __init__(self, syncer: FakeSyncer, source: str, target: str, key_id: str, guest_id: str) -> None:
        self.syncer, self.world, self.source, self.target = syncer, syncer.world, source, target
        self.key_id, self.guest_id, self.closed, self.key_left = key_id, guest_id, False, False

    def pass_(self, *, final: bool, on_output: OutputSink | None = None, paused: bool = False) -> SyncStats:
        """`paused`: FakeSyncer.sync passed the `during:` pause point already."""
        kind = "final" if final else "pass"
        if self.closed:
            raise UnexpectedCall(f"fake: a {kind} pass through the closed sync session {self.key_id}")
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
            raise ConnectionLost(f"fake: connection to {self.target} lost during rsync")
        if on_output:
            on_output(f"sent {files} files")
        maybe_pause(f"after:sync:{kind}")
        return SyncStats(files=files, bytes=files * 2048, seconds=round(0.01 + files * 0.001, 3), key_id=self.key_id)

    def close(self) -> bool:
        if self.closed:
            return not self.key_left
        self.closed = True
        with self.world.change() as world:
            try:
                name, _ = _guest_of(world, self.syncer.networks[self.source])
                reached = world["domains"][name]["guest"] == self.guest_id
            except InfraError:
                reached = False
            keys = world["guests"].get(self.guest_id, {}).get("authorized_sync_keys", [])
            if reached and self.key_id in keys:
                keys.remove(self.key_id)
            self.key_left = self.key_id in keys
            effect(world, "sync_close", source=self.source, key_id=self.key_id, left=self.key_left)
        return not self.key_left
