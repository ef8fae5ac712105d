"""Fixtures for the notify tests: a real SMTP server (aiosmtpd) and a webhook receiver
(http.server) bound to 127.0.0.1 only, a plan's announce section and notices. No traffic leaves
the loopback interface."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from notify_helpers import END, LOOPBACK, PASSWORD, SECRET, START, USER, Inbox, Receiver, Request, free_port

from upgrader.notify import Kind, Notice
from upgrader.plan import Announce


def _start(inbox: Inbox, **kw: Any) -> Controller:
    controller = Controller(inbox, hostname=LOOPBACK, port=inbox.port, server_hostname="mx.test", **kw)
    controller.start()
    return controller


@pytest.fixture
def smtp_server() -> Iterator[Inbox]:
    inbox = Inbox(free_port())
    controller = _start(inbox)
    try:
        yield inbox
    finally:
        controller.stop()


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_auth_server() -> Iterator[Inbox]:
    """AUTH PLAIN/LOGIN without TLS: acceptable on loopback in a test, nowhere else."""
    inbox = Inbox(free_port())
    controller = _start(inbox, authenticator=_authenticator, auth_require_tls=False, auth_required=True)
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def announce() -> Announce:
    return Announce(sender="ops@example.org", to=["alice@example.org", "bob@example.net"])


@pytest.fixture
def make_notice() -> Callable[..., Notice]:
    def make(kind: Kind = Kind.ANNOUNCE, **kw: Any) -> Notice:
        values: dict[str, Any] = dict(
            host="mailhost", run_id="20240520-ab12", window_start=START, window_end=END,
            timezone="Europe/Berlin", sequence=0, forecast_seconds=90.0,
        )
        values.update(kw)
        return Notice(kind=kind, **values)

    return make


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 that checks the signature made with SECRET."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the request must go straight to 127.0.0.1
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            # what a receiver does, written out here independently of verify_signature
            body = self.rfile.read(int(self.headers["Content-Length"]))
            stamp = self.headers.get("X-Upgrader-Timestamp", "")
            signature = self.headers.get("X-Upgrader-Signature", "")
            state.requests.append(Request(body, stamp, signature))
            if state.on_post is not None:
                state.on_post()
            expected = "sha256=" + hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= 300
            if not (fresh and hmac.compare_digest(expected, signature)):
                state.bad_signatures += 1
                self.send_response(401)
            else:
                assert self.headers["Content-Type"] == "application/json"
                state.bodies.append(json.loads(body))
                state.timestamps.append(int(stamp))
                self.send_response(state.status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    state.url = f"http://{LOOPBACK}:{server.server_address[1]}/hooks/upgrader?token=t0ken"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
