"""Shared values, the SMTP inbox and the webhook receiver's record for the notify tests
(imported by conftest and the tests)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from upgrader.notify import SmtpSettings

LOOPBACK = "127.0.0.1"
USER, PASSWORD = "upgrader", "s3cret-pw"
START = datetime(2024, 6, 1, 1, 0, tzinfo=timezone.utc)
END = datetime(2024, 6, 1, 3, 0, tzinfo=timezone.utc)
NOW = datetime(2024, 5, 20, 12, 0, tzinfo=timezone.utc)
SECRET = b"webhook-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Inbox:
    """What the SMTP server accepted."""

    port: int
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), msg))
        return "250 OK"

    def settings(self, **kw: Any) -> SmtpSettings:
        return SmtpSettings(host=LOOPBACK, port=self.port, timeout=5, local_hostname="client.test", **kw)


@dataclass(frozen=True)
class Request:
    """One POST as it arrived: the raw body and the two signing headers."""

    body: bytes
    timestamp: str
    signature: str


@dataclass
class Receiver:
    """What the local webhook receiver (conftest `receiver`) accepted. `on_post` runs as a
    request arrives, before it is answered."""

    url: str
    status: int = 204
    bodies: list[dict[str, object]] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    bad_signatures: int = 0
    on_post: Callable[[], None] | None = None
