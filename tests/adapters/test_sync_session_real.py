"""The rsync adapter's sync session against real sshd's on 127.0.0.1 (tests/adapters/sshd_servers.py;
prod dropbear or OpenSSH, staging dropbear): a tunnel whose connection went raises ConnectionLost
at once instead of retrying rsync into it (review M1), and a new session gets the pass through;
`revoke` is one command on the source, `close` leaves no forward, no key line, no key pair; a
failing pass leaves nothing behind (L10); an interrupted revoke does not claim success (L8)."""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from tests.adapters.test_sync_key import (  # noqa: F401 - the fixtures
    MARKER,
    RUN,
    StubShell,
    client_key,
    guests,
    real_syncer,
    sync_lines,
)
from tests.adapters.sshd_servers import Server
from upgrader.adapters.rsync_session import RsyncSession
from upgrader.adapters.rsync_syncer import RsyncSyncer, SyncFailed
from upgrader.errors import ConnectionLost
from upgrader.ports import Command

MAIL = [("/mnt/mail", [])]


def mailboxes(prod: Server, staging: Server) -> None:
    (prod.data / "mail").mkdir()
    (prod.data / "mail" / "m1").write_text("one\n")
    (staging.data / "mail").mkdir()


def nothing_left(prod: Server, staging: Server) -> None:
    assert sync_lines(prod) == [] and prod.authorized_keys.read_text().splitlines()[0].endswith(" orchestrator")
    for server in (prod, staging):
        workdir = server.home / ".upgrader-sync"
        assert not workdir.exists() or list(workdir.iterdir()) == [], list(workdir.iterdir())


@contextlib.contextmanager
def a_session(prod: Server, staging: Server) -> Iterator[tuple[RsyncSyncer, RsyncSession]]:
    """A session of /mnt/mail (m1 on prod); afterwards nothing of any sync may be left."""
    mailboxes(prod, staging)
    syncer = real_syncer(prod, staging)
    try:
        yield syncer, syncer.open("prod", "staging", MAIL)
    finally:
        syncer.shells.reset()
    nothing_left(prod, staging)


def reaches_sshd(transport: Any, port: int) -> bool:
    """Does a connection to the target's 127.0.0.1:`port` (the sync's forward) get an SSH banner
    from prod's sshd? (dropbear keeps listening after a cancel: what matters is nothing comes through.)"""
    try:
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)
    except Exception:  # noqa: BLE001 - refused: nothing listens
        return False
    try:
        channel.settimeout(5)
        data = b""
        while b"\n" not in data:
            chunk = channel.recv(256)
            if not chunk:
                break
            data += chunk
    except OSError:
        data = b""
    finally:
        channel.close()
    return data.startswith(b"SSH-")


def runs_of(monkeypatch: pytest.MonkeyPatch, shell: Any, only: str = "", before: Any = None) -> list[str]:
    """Record the commands `shell` runs that start with `only`; `before` runs first (to break something)."""
    ran: list[str] = []
    real_run = shell.run

    def run(command: Command, **kw: Any) -> Any:
        if command.line.startswith(only):
            ran.append(command.line)
            if before is not None:
                before()
        return real_run(command, **kw)

    monkeypatch.setattr(shell, "run", run)
    return ran


@pytest.mark.parametrize("side", ["dst", "src"])
def test_a_session_whose_connection_was_replaced_raises_connection_lost_and_a_new_one_syncs(
        guests: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    prod, staging = guests
    with a_session(prod, staging) as (syncer, session):
        shell = getattr(session, side)
        shell.conn.close()  # the connection dies after the open ...
        shell.ensure()  # ... and the next command (the quiesce on prod) reconnects quietly
        ran = runs_of(monkeypatch, session.dst, "rsync ")
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="tunnel went with its connection"):
            session.pass_(final=True)
        assert ran == [] and time.monotonic() - started < 1.0  # no rsync into the dead tunnel
        assert session.close()
        again = syncer.open("prod", "staging", MAIL)  # what session_pass's retry does
        stats = again.pass_(final=True)
        assert again.close() and stats.files == 1
    assert sorted(p.name for p in (staging.data / "mail").iterdir()) == ["m1"]


def test_a_tunnel_lost_during_the_pass_is_connection_lost_not_three_retries(
        guests: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    with a_session(*guests) as (_, session):
        assert session.src_transport is not None
        ran = runs_of(monkeypatch, session.dst, "rsync ", before=session.src_transport.close)  # prod's connection dies as rsync starts
        with pytest.raises(ConnectionLost):
            session.pass_(final=True)
        assert len(ran) == 1, ran  # the first transfer cut short; no retry through the dead tunnel
        assert session.close()  # the key line is removed over a new connection to prod


def test_revoke_is_one_command_on_the_source_and_close_leaves_no_forward(
        guests: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    prod, staging = guests
    with a_session(prod, staging) as (_, session):
        session.pass_(final=True)
        assert session.transport is not None
        assert reaches_sshd(session.transport, session.remote_port)
        commands = {side: runs_of(monkeypatch, getattr(session, side)) for side in ("src", "dst")}
        assert session.revoke() and sync_lines(prod) == []
        assert len(commands["src"]) == 1 and commands["dst"] == []  # the window's whole clean-up
        assert (staging.home / ".upgrader-sync" / session.key_id).is_dir()  # the key pair: for close or a sweep
        with pytest.raises(Exception, match="closed"):
            session.pass_(final=True)
        assert session.close() and session.close()
        assert not reaches_sshd(session.transport, session.remote_port)  # the tunnel carries nothing any more


def test_a_failing_pass_through_session_pass_leaves_no_key_line_and_no_key_pair(guests: tuple[Server, Server]) -> None:
    """rsync exits 23 (the path is not on prod): the step's pass fails, and the session it held is
    closed before the error goes on (steps/sync_session.py session_pass)."""
    from upgrader.steps.sync_session import OpenSync, session_pass

    prod, staging = guests
    syncer = real_syncer(prod, staging)
    said: list[Any] = []
    ctx = SimpleNamespace(
        ports=SimpleNamespace(syncer=syncer), run_id=RUN, emit=said.append, output_sink=lambda key: None,
        plan=SimpleNamespace(sync=SimpleNamespace(paths=[SimpleNamespace(path="/mnt/not-there", exclude=[])])),
        once_reconnecting=lambda key, title, run: run({}),  # the step's `once`, without a journal
    )
    held = OpenSync("prod", "staging")
    try:
        held.ensure(ctx, "cutover.sync_open")  # type: ignore[arg-type]
        assert len(sync_lines(prod)) == 1
        with pytest.raises(SyncFailed) as failed:
            session_pass(ctx, "cutover.final_sync", held, final=True)  # type: ignore[arg-type]
        assert failed.value.result is not None and failed.value.result.rc == 23
        assert held.session is None
    finally:
        syncer.shells.reset()
    nothing_left(prod, staging)


def test_an_interrupted_revoke_does_not_claim_the_key_is_gone() -> None:
    """Review L8: SIGTERM (KeyboardInterrupt) inside the removal: a second call must not say True."""
    key_id = f"{MARKER}-{RUN}-0badf00d"
    src = StubShell("prod", {"upgrader-keys": KeyboardInterrupt()})
    session = RsyncSession(RsyncSyncer(None, RUN), src, StubShell("staging"), key_id, [], None)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        session.revoke()
    assert session.revoke() is False and session.close() is False and session.key_left
