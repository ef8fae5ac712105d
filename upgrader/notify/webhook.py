"""Delivery by webhook (urllib): POST the notice as JSON, signed with HMAC-SHA256 so the
receiver can check it came from us. Same port as SmtpNotifier: `send` takes the rendered message
and reads the notice from its X-Upgrader-* headers (set by render); `post` sends any JSON object
the same way (the operator notices, notify/operator.py).

The signature covers a timestamp as well as the body (as Stripe and Slack sign theirs), so a
captured request cannot be replayed later:

    X-Upgrader-Timestamp: 1764601200                  (unix seconds when it was sent)
    X-Upgrader-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

A receiver recomputes the HMAC over the timestamp header, a ".", and the raw body bytes (before
any JSON parsing), compares in constant time, and refuses a timestamp more than 5 minutes away
from its own clock: `verify_signature` does exactly that."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage

from upgrader.errors import InfraError, InputError
from upgrader.notify.delivery import DeliveryRefused
from upgrader.notify.message import HEADER_PREFIX

SIGNATURE_HEADER = "X-Upgrader-Signature"
TIMESTAMP_HEADER = "X-Upgrader-Timestamp"
TOLERANCE_SECONDS = 300.0


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Upgrader-Signature value: "sha256=" + hex HMAC-SHA256 of "<timestamp>." + body."""
    return _signed(secret, timestamp, body)


def _signed(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes | str, timestamp: str | int, body: bytes, signature: str, now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: True only if `timestamp` (the X-Upgrader-Timestamp header) is an
    integer at most `tolerance` seconds away from `now` (unix seconds; older means a replay) and
    `signature` (the X-Upgrader-Signature header) matches the HMAC of that timestamp and the raw
    `body`, compared in constant time."""
    try:
        sent = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.compare_digest(_signed(key, sent, body), signature)


def payload(message: EmailMessage) -> dict[str, object]:
    """The JSON object for a message built by render()."""

    def field(name: str) -> str | None:
        value = message.get(HEADER_PREFIX + name)
        return None if value is None else str(value)

    kind, host, run_id, sequence = field("Kind"), field("Host"), field("Run-Id"), field("Sequence")
    if kind is None or host is None or run_id is None or sequence is None:
        raise InputError(
            "the message has no X-Upgrader-Kind/Host/Run-Id/Sequence headers",
            hint="build messages with upgrader.notify.render",
        )
    return {
        "kind": kind,
        "host": host,
        "run_id": run_id,
        "window_start": field("Window-Start"),
        "window_end": field("Window-End"),
        "sequence": int(sequence),
        "reason": field("Reason"),
        "message_id": str(message["Message-ID"]) if message["Message-ID"] else None,
    }


class WebhookNotifier:
    """Notifier port over HTTP(S) POST. The secret never appears in repr or errors."""

    def __init__(self, url: str, secret: bytes | str, *, timeout: float = 30, clock: Callable[[], float] = time.time) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"webhook URL must be http:// or https:// with a host, got {url!r}")
        if not secret:
            raise InputError("the webhook secret is empty", hint="the receiver checks the HMAC signature with it")
        self.url = url
        # For messages: no user:password@ and no query (webhook URLs often carry a token there).
        self.shown_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.timeout = timeout
        self.clock = clock  # unix seconds for X-Upgrader-Timestamp

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.shown_url!r}, secret='***')"

    def send(self, message: EmailMessage) -> str:
        data = payload(message)
        self.post(data)
        return str(data["message_id"] or "")

    def post(self, data: Mapping[str, object]) -> None:
        """POST `data` as JSON, signed (a retry is signed anew, with its own time). InfraError when
        the receiver is unreachable or answers 5xx/408/429 (worth retrying), DeliveryRefused for
        any other 4xx."""
        body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
        sent = int(self.clock())
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(sent),
                SIGNATURE_HEADER: signature(self._secret, sent, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            error = InfraError if exc.code >= 500 or exc.code in (408, 429) else DeliveryRefused
            raise error(f"webhook {self.shown_url} answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InfraError(f"cannot reach webhook {self.shown_url}: {reason}", hint="check the URL and that the receiver runs") from None
