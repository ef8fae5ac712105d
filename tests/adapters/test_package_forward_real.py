"""The Shell port's remote forward (the isolated twin's package proxy) against real sshd's on
127.0.0.1 - dropbear (the lab guest's) and OpenSSH's - through FabricShell: the guest's
127.0.0.1:P reaches the proxy the orchestrator reaches; a tool given http_proxy uses it; a proxy
that does not answer is an HTTP 502 naming it at once, not a hang; the forward comes back after a
reconnect and is gone after unforward; an sshd that forbids forwarding, or a port in use, is a
ForwardRefused with its hint. Needs root (the servers' mount namespaces) and curl."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.adapters.sshd_servers import Server, free_port, http_stand_in, plan_for, why_not
from upgrader.adapters.fabric_shell import FabricShell, FabricShells
from upgrader.errors import ForwardRefused
from upgrader.ports import Command, RemoteForward, cmd

MARKER = "upgrader-package-proxy-marker"


@pytest.fixture(scope="module")
def proxy() -> Iterator[int]:
    """Stands in for apt-cacher-ng: answers every request with the marker and the request line."""
    with http_stand_in(lambda path: f"{MARKER} GET {path}\n") as port:
        yield port


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("orchestrator") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def start(kind: str, base: Path, client_key: Path, args: str = "") -> Server:
    reason = why_not(kind) or (None if shutil.which("curl") else "needs curl")
    if reason:
        pytest.skip(f"{kind}: {reason}")
    return Server(kind, base, client_key, args=args).start()


@pytest.fixture(params=["dropbear", "openssh"])
def twin(request: pytest.FixtureRequest, tmp_path: Path, client_key: Path) -> Iterator[FabricShell]:
    server = start(request.param, tmp_path / "twin", client_key)
    shells = FabricShells(plan_for(server, server), wait=5)  # type: ignore[arg-type]
    try:
        yield shells.connect("staging")
    finally:
        shells.reset()
        server.stop()


def fetch(shell: FabricShell, url: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    result = shell.run(cmd("curl -sS --max-time 60 {}", url), timeout=90, env=env)
    return result.rc, result.stdout + result.stderr, time.monotonic() - started


def test_the_twin_reaches_the_proxy_through_the_forward(twin: FabricShell, proxy: int) -> None:
    port = free_port()
    rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/marker")
    assert rc != 0 and MARKER not in out  # nothing there before the forward
    forward = RemoteForward(port, "127.0.0.1", proxy)
    twin.forward(forward)
    rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/marker")
    assert rc == 0 and out.strip() == f"{MARKER} GET /marker", out
    # a tool given the steps' http_proxy sends the whole URL to the proxy (what apt, pkg and fetch do)
    rc, out, _ = fetch(twin, "http://deb.debian.invalid/dists/trixie/Release", {"http_proxy": f"http://127.0.0.1:{port}"})
    assert rc == 0 and out.strip() == f"{MARKER} GET http://deb.debian.invalid/dists/trixie/Release", out
    twin.unforward(forward)
    rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/marker")
    assert rc != 0 and MARKER not in out
    # the next phase asks for the same port again (upgrade, then validate_staging): dropbear denies
    # every cancel, so unforward drops the connection and the listener goes with it
    twin.forward(forward)
    rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/again")
    assert rc == 0 and out.strip() == f"{MARKER} GET /again", out


def test_the_forward_comes_back_after_a_reconnect(twin: FabricShell, proxy: int) -> None:
    port = free_port()
    twin.forward(RemoteForward(port, "127.0.0.1", proxy))
    twin.close()  # like a lost connection, or a reboot
    rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/again")
    assert rc == 0 and out.strip() == f"{MARKER} GET /again", out


def test_a_proxy_that_does_not_answer_is_a_502_naming_it(twin: FabricShell) -> None:
    port, dead = free_port(), free_port()
    twin.forward(RemoteForward(port, "127.0.0.1", dead))
    rc, out, seconds = fetch(twin, f"http://127.0.0.1:{port}/x")
    assert rc == 0 and f"upgrader: package proxy 127.0.0.1:{dead} unreachable (Connection refused)" in out, out
    result = twin.run(cmd("curl -sS -o /dev/null -w '%{{http_code}}' {}", f"http://127.0.0.1:{port}/x"), timeout=90)
    assert result.stdout.strip() == "502"
    assert seconds < 10  # said at once, not a hang


def test_port_in_use_on_the_twin_is_refused(twin: FabricShell, proxy: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("upgrader.adapters.fabric_shell.FORWARD_REOPEN_WAIT", 2.0)  # how long a taken port is waited for
    with socket.socket() as taken:  # the twin's loopback is this machine's (the servers share its network)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(ForwardRefused) as info:
            twin.forward(RemoteForward(port, "127.0.0.1", proxy))
    # OpenSSH refuses it; dropbear binds ::1 alone and says yes - the check after opening catches that
    message = info.value.message
    assert f"refused a remote forward on its 127.0.0.1:{port}" in message or (
        f"accepted a remote forward on its 127.0.0.1:{port}" in message and "the port is in use on the guest" in message)
    assert "AllowTcpForwarding" in (info.value.hint or "")
    assert twin.forwards.open == {}  # not kept: a reconnect does not ask for it again
    assert twin.run(Command("true"), timeout=30).ok  # the connection is still usable


def test_a_port_an_older_session_frees_is_waited_for(twin: FabricShell, proxy: int) -> None:
    """A resumed run finds the forward's port still held (the session of the killed upgrader, an
    operator's `upgrader ssh --twin -R`): the forward is asked for again until it is free."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = int(taken.getsockname()[1])
    threading.Timer(3.0, taken.close).start()
    started = time.monotonic()
    twin.forward(RemoteForward(port, "127.0.0.1", proxy))
    try:
        waited = time.monotonic() - started
        rc, out, _ = fetch(twin, f"http://127.0.0.1:{port}/marker")
        assert rc == 0 and out.strip() == f"{MARKER} GET /marker", out
        assert 2.5 < waited < 30, waited
    finally:
        twin.unforward(RemoteForward(port, "127.0.0.1", proxy))


@pytest.mark.parametrize(("kind", "args"), [("dropbear", "-k"), ("openssh", "AllowTcpForwarding local")])
def test_an_sshd_that_forbids_remote_forwards_is_refused(tmp_path: Path, client_key: Path, proxy: int, kind: str,
                                                         args: str) -> None:
    server = start(kind, tmp_path / "twin", client_key, args)
    shells = FabricShells(plan_for(server, server), wait=5)  # type: ignore[arg-type]
    try:
        started = time.monotonic()
        with pytest.raises(ForwardRefused) as info:
            shells.connect("staging").forward(RemoteForward(free_port(), "127.0.0.1", proxy))
        assert time.monotonic() - started < 10  # no retries for a refusal on a fresh forward
        assert "AllowTcpForwarding" in (info.value.hint or "") and "-k" in (info.value.hint or "")
    finally:
        shells.reset()
        server.stop()


class _DeadTransport:
    """A transport whose connection died (a guest going down mid-reboot): every request fails."""

    def __init__(self, active: bool) -> None:
        self.active, self.asked = active, 0

    def is_active(self) -> bool:
        return self.active

    def request_port_forward(self, address: str, port: int, handler: object = None) -> int:
        self.asked += 1
        raise paramiko.SSHException("SSH session not active" if not self.active else "TCP forwarding request denied")


def test_a_dead_connection_is_a_lost_connection_not_a_refusal() -> None:
    """A reboot's reconnect loop retries a ConnectionLost; a ForwardRefused would end the reboot step."""
    from upgrader.adapters.remote_forward import RemoteForwards
    from upgrader.errors import ConnectionLost

    forwards = RemoteForwards("root@twin:22 (staging)")
    dead = _DeadTransport(active=False)
    forwards.open[3142] = RemoteForward(3142, "127.0.0.1", 3142)
    with pytest.raises(ConnectionLost):
        forwards.reopen(dead, wait=30)  # type: ignore[arg-type]
    assert dead.asked == 1  # at once, not after the 30 s meant for a port still held
    refusing = _DeadTransport(active=True)
    with pytest.raises(ForwardRefused):
        forwards.add(refusing, RemoteForward(3143, "127.0.0.1", 3142))  # type: ignore[arg-type]
    assert 3143 not in forwards.open and 3142 in forwards.open
