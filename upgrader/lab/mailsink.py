"""A local SMTP sink (aiosmtpd) on loopback that keeps every message it receives as a file, so
the demo and the tests can show what customers were sent:

    python -m upgrader.lab.mailsink --dir DIR [--port 2525]

`upgrader lab up` runs one on 127.0.0.1:2525 (its pid in the lab's run dir); `upgrader lab mail`
lists what it received. Point upgrader at it with UPGRADER_SMTP_HOST=127.0.0.1
UPGRADER_SMTP_PORT=2525. It only ever listens on 127.0.0.1."""

from __future__ import annotations

import argparse
import email
import email.policy
import signal
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.controller import Controller

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 2525


class Sink:
    """aiosmtpd handler: every message is written to `directory` (tmp -> new, like a Maildir)."""

    def __init__(self, directory: Path, on_message: Callable[[EmailMessage], None] | None = None) -> None:
        self.directory = directory
        self.on_message = on_message
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        (directory / "new").mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self.lock:
            self.count += 1
            name = f"{time.time():.6f}.{self.count}.eml"
        tmp = self.directory / "tmp" / name
        tmp.write_bytes(envelope.content)
        tmp.rename(self.directory / "new" / name)
        if self.on_message is not None:
            self.on_message(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK: kept"


@dataclass(frozen=True)
class Received:
    path: Path
    message: EmailMessage

    @property
    def kind(self) -> str:
        return str(self.message.get("X-Upgrader-Kind", "?"))

    @property
    def invite(self) -> bytes | None:
        for part in self.message.walk():
            if part.get_content_type() == "text/calendar":
                payload = part.get_payload(decode=True)
                return payload if isinstance(payload, bytes) else None
        return None


def received(directory: Path) -> list[Received]:
    out = []
    for path in sorted((directory / "new").glob("*.eml")):
        out.append(Received(path, email.message_from_bytes(path.read_bytes(), policy=email.policy.default)))  # type: ignore[arg-type]
    return out


def start(directory: Path, port: int = DEFAULT_PORT, on_message: Callable[[EmailMessage], None] | None = None) -> Controller:
    controller = Controller(Sink(directory, on_message), hostname=LOOPBACK, port=port, server_hostname="sink.lab")
    controller.start()
    return controller


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upgrader.lab.mailsink")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = p.parse_args(argv)
    controller = start(args.dir, args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
