"""The realistic sender of the cutover bench (issue 14): like a sending MTA, it starts a new
delivery every `interval` seconds, each on its own SMTP connection in its own thread (so several
are in flight while the service is away), with a long connect timeout (30 s by default: a held
SYN is retransmitted by the client's TCP stack and lands on the new prod).

Per delivery it records the first attempt and the completion (time.monotonic) and the outcome:
- accepted: the server took the mail (its Message-ID counts for the lost-mail check);
- refused: the server said no (an SMTP 4xx/5xx reply) or refused the connection (ECONNREFUSED)
  — a real MTA queues such a mail and retries it minutes later;
- failed: anything else (a timeout, a reset, a dropped session).
The delay of a delivery is completion - first attempt; the summary has the longest of the accepted
ones (`longest_delivery_delay`) and, apart, the longest a refused or failed one took.
"""

from __future__ import annotations

import contextlib
import smtplib
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Callable

ACCEPTED, REFUSED, FAILED = "accepted", "refused", "failed"


@dataclass
class Delivery:
    msg_id: str
    first_attempt: float
    completed: float | None = None
    outcome: str | None = None
    error: str = ""

    @property
    def delay(self) -> float | None:
        return None if self.completed is None else self.completed - self.first_attempt


def outcome_of(exc: BaseException) -> str:
    """refused: the server's own no (a 4xx/5xx reply, a refused connection); failed: the rest."""
    if isinstance(exc, (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, ConnectionRefusedError)):
        return REFUSED
    return FAILED


class Sender:
    def __init__(self, host: str, port: int, to: str, *, interval: float = 0.2, connect_timeout: float = 30.0,
                 write: Callable[..., None] | None = None, tag: str = "sender") -> None:
        self.host, self.port, self.to, self.interval, self.connect_timeout = host, port, to, interval, connect_timeout
        self.write, self.tag = write, tag
        self.deliveries: list[Delivery] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def run(self, stop: threading.Event) -> None:
        """Start a delivery every `interval` until `stop`, then wait for those in flight."""
        n, began = 0, time.monotonic()
        while not stop.is_set():
            n += 1
            thread = threading.Thread(target=self.deliver, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
            stop.wait(max(0.0, began + n * self.interval - time.monotonic()))  # a fixed rate, not after each
        for thread in self._threads:
            thread.join()

    def deliver(self, n: int) -> Delivery:
        msg_id = f"<{self.tag}-{int(time.time())}-{n}@client.lab>"
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "sender@client.lab", self.to, f"{self.tag} #{n}", msg_id
        msg.set_content(f"delivery {n}\n")
        delivery = Delivery(msg_id, time.monotonic())
        with self.lock:
            self.deliveries.append(delivery)
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.connect_timeout)
            try:
                refused = smtp.send_message(msg)
            finally:  # the mail was accepted (or not) by DATA's reply: QUIT's answer changes nothing
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    smtp.quit()
            if refused:  # some recipients refused: not delivered to them
                raise smtplib.SMTPRecipientsRefused(refused)
            outcome, error = ACCEPTED, ""
        except (OSError, smtplib.SMTPException) as exc:
            outcome, error = outcome_of(exc), f"{type(exc).__name__}: {exc}"
        with self.lock:
            delivery.completed, delivery.outcome, delivery.error = time.monotonic(), outcome, error
            if error and len(self.errors) < 20:
                self.errors.append(error)
        if self.write is not None:
            self.write(sender=outcome, id=msg_id, delay=round(delivery.delay or 0.0, 3), **({"error": error} if error else {}))
        return delivery

    def summary(self) -> dict[str, Any]:
        with self.lock:
            done = [d for d in self.deliveries if d.outcome is not None]
            count = {k: sum(1 for d in done if d.outcome == k) for k in (ACCEPTED, REFUSED, FAILED)}
            return {"sender_deliveries": len(self.deliveries), "sender_accepted": count[ACCEPTED],
                    "sender_refused": count[REFUSED], "sender_failed": count[FAILED],
                    "sender_unfinished": len(self.deliveries) - len(done),
                    "sender_accepted_ids": [d.msg_id for d in done if d.outcome == ACCEPTED],
                    # over accepted mails only: a refused or timed-out one was never delivered
                    "longest_delivery_delay": round(max((d.delay or 0.0 for d in done if d.outcome == ACCEPTED), default=0.0), 3),
                    "longest_unaccepted_s": round(max((d.delay or 0.0 for d in done if d.outcome != ACCEPTED), default=0.0), 3),
                    "sender_errors": list(self.errors)}
