"""The network checks against a real server on loopback: the greeting protocols (SMTP, IMAP) read the
banner, say goodbye in the protocol's own words and match the banner."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from upgrader.adapters.net_prober import NetProber
from upgrader.errors import CheckFailed
from upgrader.ports import Probe


@pytest.fixture
def greeter() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A server that greets with banner[0] and records what the client said before closing."""
    banner: list[bytes] = [b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot (Debian) ready.\r\n"]
    heard: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(banner[0])
                conn.settimeout(5)
                try:
                    heard.append(conn.recv(100))
                except OSError:
                    heard.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], banner, heard
    stop.set()
    server.close()
    thread.join(5)


def _heard(heard: list[bytes]) -> list[bytes]:
    """What the server recorded, once it has (it reads after the client has gone)."""
    for _ in range(100):
        if heard:
            break
        time.sleep(0.05)
    return heard


def _prober() -> NetProber:
    prober = NetProber.__new__(NetProber)
    prober.targets = {"prod": SimpleNamespace(host="127.0.0.1", proxy_command=None)}  # type: ignore[dict-item]
    return prober


def test_imap_banner_is_read_and_the_client_logs_out(greeter: tuple[int, list[bytes], list[bytes]]) -> None:
    port, _, heard = greeter
    seen = _prober().probe("prod", Probe(kind="imap", port=port, timeout=5))
    assert seen.startswith("* OK [CAPABILITY IMAP4rev1")
    assert _heard(heard) == [b"a1 LOGOUT\r\n"]


def test_an_smtp_banner_does_not_pass_an_imap_check(greeter: tuple[int, list[bytes], list[bytes]]) -> None:
    port, banner, _ = greeter
    banner[0] = b"220 mailhost ESMTP Postfix (Debian/GNU)\r\n"
    with pytest.raises(CheckFailed, match=r"does not match /\^\\\* OK/"):
        _prober().probe("prod", Probe(kind="imap", port=port, timeout=1.5))


def test_smtp_banner_and_quit(greeter: tuple[int, list[bytes], list[bytes]]) -> None:
    port, banner, heard = greeter
    banner[0] = b"220 mailhost ESMTP Postfix (Debian/GNU)\r\n"
    seen = _prober().probe("prod", Probe(kind="smtp", port=port, expect="ESMTP Postfix", timeout=5))
    assert seen == "220 mailhost ESMTP Postfix (Debian/GNU)"
    assert _heard(heard) == [b"QUIT\r\n"]


def _opens_late(delay: float, greeting: bytes | None) -> tuple[int, list[float], threading.Thread, socket.socket]:
    """A loopback port that refuses (bound, not listening) until `delay` s have passed, then
    accepts (and greets with `greeting`); opened[0] = time.monotonic() when it started listening."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    opened: list[float] = []

    def serve() -> None:
        time.sleep(delay)
        server.listen()
        opened.append(time.monotonic())
        server.settimeout(5)
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            if greeting:
                conn.sendall(greeting)
                conn.settimeout(2)
                try:
                    conn.recv(100)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], opened, thread, server


@pytest.mark.parametrize(("kind", "greeting"), [("smtp", b"220 mailhost ESMTP\r\n"), ("tcp", None)])
def test_the_fast_wait_sees_a_port_that_opens_late_at_once(kind: str, greeting: bytes | None) -> None:
    """cutover.service_back's wait: a port that starts listening 0.3 s in is seen well within one
    tenth of the old 1 s retry spacing (generous bound for a loaded machine)."""
    port, opened, thread, server = _opens_late(0.3, greeting)
    try:
        seen = _prober().wait_answers("prod", Probe(kind=kind, port=port, timeout=10))
        noticed = time.monotonic()
    finally:
        thread.join(5)
        server.close()
    assert seen == ("220 mailhost ESMTP" if greeting else "open")
    assert opened, "the listener never opened"
    assert noticed - opened[0] < 0.3, f"seen {noticed - opened[0]:.3f} s after the port opened"


def test_the_fast_wait_gives_up_at_the_probe_timeout() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        started = time.monotonic()
        with pytest.raises(CheckFailed, match="refused"):
            _prober().wait_answers("prod", Probe(kind="smtp", port=server.getsockname()[1], timeout=0.5))
        took = time.monotonic() - started
    finally:
        server.close()
    assert 0.4 <= took < 1.5, took


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox nc is the lab's ProxyCommand")
def test_the_fast_wait_through_a_proxy_starts_a_fresh_proxy_each_try() -> None:
    """The lab reaches prod through `busybox nc %h %p`: a refused try ends that nc; the next try
    is a new one, and the greeting of a port that opened late is seen soon after it opened."""
    port, opened, thread, server = _opens_late(0.3, b"220 mailhost ESMTP\r\n")
    prober = NetProber.__new__(NetProber)
    prober.targets = {"prod": SimpleNamespace(host="127.0.0.1", proxy_command=f"{shutil.which('busybox')} nc %h %p")}  # type: ignore[dict-item]
    try:
        seen = prober.wait_answers("prod", Probe(kind="smtp", port=port, timeout=10))
        noticed = time.monotonic()
    finally:
        thread.join(5)
        server.close()
    assert seen == "220 mailhost ESMTP"
    assert noticed - opened[0] < 0.3, f"seen {noticed - opened[0]:.3f} s after the port opened"


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox nc is the lab's ProxyCommand")
def test_the_fast_wait_through_a_proxy_spawns_at_most_ten_proxies_a_second(tmp_path: Path) -> None:
    """Each try through a proxy is a new process (an `ssh -W` login at a site): a refused port
    must not make the wait start one every 50 ms."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))  # bound, never listening: refused at once
    spawned = tmp_path / "spawned"
    prober = NetProber.__new__(NetProber)
    prober.targets = {"prod": SimpleNamespace(  # type: ignore[dict-item]
        host="127.0.0.1", proxy_command=f"echo x >> {spawned}; exec {shutil.which('busybox')} nc %h %p")}
    try:
        with pytest.raises(CheckFailed):
            prober.wait_answers("prod", Probe(kind="smtp", port=server.getsockname()[1], timeout=1.0))
    finally:
        server.close()
    tries = len(spawned.read_text().splitlines())
    assert 5 <= tries <= 11, tries


def test_the_fast_wait_doubles_its_connect_wait_on_silence_and_shortens_it_on_a_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a far orchestrator (a connect slower than 0.2 s) must not fail every try until the timeout
    # and roll back a good cutover: silence doubles the wait; a refusal brings it back to 0.2 s
    import upgrader.adapters.net_prober as net_prober

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    real = socket.create_connection
    waits: list[float] = []
    script = ["silent", "silent", "refused", "silent", "real"]

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        waits.append(timeout)
        what = script.pop(0)
        if what == "silent":
            raise TimeoutError("timed out")
        if what == "refused":
            raise ConnectionRefusedError(111, "Connection refused")
        return real(address, timeout=timeout)

    def greet() -> None:
        conn, _ = server.accept()
        conn.sendall(b"220 far ESMTP\r\n")
        conn.recv(64)
        conn.sendall(b"221 bye\r\n")
        conn.close()

    threading.Thread(target=greet, daemon=True).start()
    monkeypatch.setattr(net_prober.socket, "create_connection", connect)
    try:
        seen = _prober().wait_answers("prod", Probe(kind="smtp", port=port, timeout=10))
    finally:
        server.close()
    assert "ESMTP" in seen
    assert waits == [0.2, 0.4, 0.8, 0.2, 0.4]
