"""Fixtures for the notify tests: a real SMTP server (aiosmtpd) bound to 127.0.0.1 only, a plan's
announce section and notices. No traffic leaves the loopback interface."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from notify_helpers import END, LOOPBACK, PASSWORD, START, USER, Inbox, free_port

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
