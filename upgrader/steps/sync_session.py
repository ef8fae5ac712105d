"""The cutover's sync session (issue 14): opened before the quiesce (`cutover.sync_open`) so the
final pass is only rsync, its key line revoked on prod right after that pass (`cutover.sync_close`,
one command: the only clean-up that must come before the takeover, while "prod" is still the old
VM), its key pair swept from the twin after the service is back (`cutover.sync_sweep`).

Crash safety: `cutover.sync_open` (or a `cutover.sync_reopen[N]`) begun and `cutover.sync_close`
not done counts as a sync in doubt (steps/sync.py `sync_in_doubt`), so a resume, an abort, a
rollback or the teardown sweeps its key as for a killed pass."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from upgrader.errors import UpgraderError
from upgrader.events import Notice
from upgrader.steps.base import StepContext
from upgrader.steps.sync import sync_paths

if TYPE_CHECKING:
    from upgrader.ports import SyncSession

OPEN_KEY = "cutover.sync_open"
REOPEN_PREFIX = "cutover.sync_reopen["  # a resumed process opens again before the quiesce: [1], [2], ...
REVOKE_KEY = "cutover.sync_close"
SWEEP_KEY = "cutover.sync_sweep"


def reopen_key(ctx: StepContext) -> str:
    """The next `cutover.sync_reopen[N]`: one per process that had to open the session again."""
    return f"{REOPEN_PREFIX}{sum(1 for key in ctx.journal.begun if key.startswith(REOPEN_PREFIX)) + 1}]"


@dataclass
class OpenSync:
    """The cutover's sync session in this process: None until opened, and in a resumed process
    whose predecessor opened it (its key was swept on resume; it is opened again)."""

    source: str
    target: str
    session: "SyncSession | None" = None

    def ensure(self, ctx: StepContext, key: str) -> tuple["SyncSession", float | None]:
        """The session, and the seconds it took to open it now (None: it was open already)."""
        if self.session is not None:
            return self.session, None
        started = time.monotonic()
        self.session = ctx.ports.syncer.open(self.source, self.target, sync_paths(ctx.plan), on_output=ctx.output_sink(key))
        return self.session, round(time.monotonic() - started, 3)

    def drop(self) -> bool:
        """Close it if open (bounded, never raising): True when no key of it is left."""
        session, self.session = self.session, None
        return session.close() if session is not None else True


def open_session(ctx: StepContext, key: str, held: OpenSync) -> dict[str, Any]:
    """Set the sync up (key pair, authorised key, tunnel) as a `once` (reconnecting)."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        session, seconds = held.ensure(ctx, key)
        return {"key_id": session.key_id, "seconds": seconds or 0.0}

    return ctx.once_reconnecting(key, f"open the sync {held.source} -> {held.target} (key, tunnel)", run)


def session_pass(ctx: StepContext, key: str, held: OpenSync, *, final: bool) -> dict[str, Any]:
    """One pass through the open session as a `once`, the outputs of `sync_once`. A pass that
    fails closes the session: a lost connection took the tunnel with it (ConnectionLost), and
    the retry opens a new one. A session opened here (a resumed process, a retry) is set up
    inside the window: said so (a warning) and timed (`setup_seconds`)."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        session, setup = held.ensure(ctx, key)
        if setup is not None:
            ctx.emit(Notice(f"{key}: the sync session was set up again after the quiesce ({setup:.2f} s of key and "
                            "tunnel inside the window)", "warning"))
        try:
            stats = session.pass_(final=final, on_output=ctx.output_sink(key))
        except BaseException:
            held.drop()
            raise
        return {**asdict(stats), "setup_seconds": setup or 0.0}

    return ctx.once_reconnecting(key, f"rsync {held.source} -> {held.target}" + (" (final)" if final else ""), run)


def revoke_session(ctx: StepContext, key: str, held: OpenSync) -> dict[str, Any]:
    """The session's key line off the source as a `once`: one command, timed (`seconds`); the
    tunnel is let go without waiting and the key pair left for `sweep_session`. The session is
    forgotten. With no session in this process (resumed: the engine swept on resume), or when
    the revoke failed, the source is swept once more (strict) while it is still the machine the
    key was authorised on; a key still left is a run warning."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        session, held.session = held.session, None
        key_id = session.key_id if session is not None else None
        gone = session.revoke() if session is not None else False
        swept = None
        if not gone:
            try:
                swept = ctx.ports.syncer.sweep([held.source], ctx.run_id, strict=True)
                gone = True
            except UpgraderError as exc:
                warning = (f"the sync key{' ' + key_id if key_id else 's'} of run {ctx.run_id} could not be removed from "
                           f"{held.source} before the takeover ({exc.message}); it stays authorised on the old VM (restricted "
                           "to rsync's sending side of the sync paths, from its own loopback) until a rollback sweeps it or "
                           "`upgrader decommission` deletes the old VM")
                if warning not in ctx.record.warnings:
                    ctx.record.warnings.append(warning)
                ctx.emit(Notice(warning, "warning"))
        return {"key_id": key_id, "key_left": not gone, "swept": swept, "seconds": round(time.monotonic() - started, 3)}

    return ctx.once(key, f"revoke the sync key on {held.source} (one command)", run)


def sweep_session(ctx: StepContext, key: str, role: str) -> dict[str, Any]:
    """After the service is back: this run's sync key pairs (and any key line) off `role`, the
    twin by then (the key pair was made there). Not in the window; a twin that does not answer
    counts 0 (a private key whose public half is revoked)."""

    def run(_: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        removed = ctx.ports.syncer.sweep([role], ctx.run_id)
        return {"removed": removed, "seconds": round(time.monotonic() - started, 3)}

    return ctx.once(key, f"remove the sync key pair from {role}", run)
