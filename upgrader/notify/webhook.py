"""Delivery by webhook (urllib): POST the notice as JSON, signed with HMAC-SHA256 so the
receiver can check it came from us. Same port as SmtpNotifier: it takes the rendered message and
reads the notice from its X-Upgrader-* headers (set by render)."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage

from upgrader.errors import InfraError, InputError
from upgrader.notify.delivery import DeliveryRefused
from upgrader.notify.message import HEADER_PREFIX

SIGNATURE_HEADER = "X-Upgrader-Signature"


def signature(secret: bytes, body: bytes) -> str:
    """The X-Upgrader-Signature value: "sha256=" + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does: constant-time compare of the header with our signature."""
    return hmac.compare_digest(signature(secret, body), header)


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

    def __init__(self, url: str, secret: bytes | str, *, timeout: float = 30) -> None:
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

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.shown_url!r}, secret='***')"

    def send(self, message: EmailMessage) -> str:
        data = payload(message)
        body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature(self._secret, body)},
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
        return str(data["message_id"] or "")
