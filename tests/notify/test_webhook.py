"""WebhookNotifier against a local http.server on 127.0.0.1 that checks the HMAC signature."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from notify_helpers import END, LOOPBACK, NOW, SECRET, START, Receiver, free_port

from upgrader.errors import InfraError, InputError
from upgrader.notify import DeliveryRefused, Kind, Notice, WebhookNotifier, render, send_with_retry
from upgrader.notify.webhook import signature, verify_signature
from upgrader.plan import Announce


@pytest.fixture
def postponed(announce: Announce, make_notice: Callable[..., Notice]) -> EmailMessage:
    return render(make_notice(Kind.POSTPONED, sequence=3, reason="staging check failed:\nsmtp banner"), announce, None, now=NOW)


def test_signed_payload_is_accepted(receiver: Receiver, postponed: EmailMessage) -> None:
    before = int(time.time())
    delivery_id = WebhookNotifier(receiver.url, SECRET).send(postponed)
    assert delivery_id == postponed["Message-ID"]
    assert receiver.bad_signatures == 0
    assert before <= receiver.timestamps[0] <= time.time()
    assert receiver.bodies == [
        {
            "kind": "postponed",
            "host": "mailhost",
            "run_id": "20240520-ab12",
            "window_start": START.isoformat(),
            "window_end": END.isoformat(),
            "sequence": 3,
            "reason": "staging check failed: smtp banner",
            "message_id": postponed["Message-ID"],
        }
    ]


def test_wrong_secret_is_refused(receiver: Receiver, postponed: EmailMessage) -> None:
    with pytest.raises(DeliveryRefused, match="401"):
        WebhookNotifier(receiver.url, "not-the-secret").send(postponed)
    assert receiver.bad_signatures == 1 and receiver.bodies == []


def test_old_timestamp_is_refused_by_the_receiver(receiver: Receiver, postponed: EmailMessage) -> None:
    """A request signed 10 minutes ago (as a replay of a captured one would be) is refused."""
    stale = WebhookNotifier(receiver.url, SECRET, clock=lambda: time.time() - 600)
    with pytest.raises(DeliveryRefused, match="401"):
        stale.send(postponed)
    assert receiver.bad_signatures == 1 and receiver.bodies == []


BODY = b'{"host":"mailhost","kind":"postponed"}'
NOW_TS = 1_764_601_200


@pytest.mark.parametrize("secret", [SECRET, SECRET.decode()])
def test_verify_signature_accepts_a_fresh_valid_request(secret: bytes | str) -> None:
    header = signature(SECRET, NOW_TS, BODY)
    assert header == "sha256=" + hmac.new(SECRET, b"1764601200." + BODY, hashlib.sha256).hexdigest()
    assert verify_signature(secret, str(NOW_TS), BODY, header, now=NOW_TS + 299)
    assert verify_signature(secret, NOW_TS, BODY, header, now=NOW_TS - 10)  # a receiver clock a bit behind


def test_verify_signature_refuses_a_tampered_body_or_timestamp() -> None:
    header = signature(SECRET, NOW_TS, BODY)
    assert not verify_signature(SECRET, NOW_TS, BODY.replace(b"postponed", b"done"), header, now=NOW_TS)
    assert not verify_signature(SECRET, NOW_TS + 1, BODY, header, now=NOW_TS)  # timestamp moved: signature breaks
    assert not verify_signature(b"other-secret", NOW_TS, BODY, header, now=NOW_TS)
    assert not verify_signature(SECRET, "17646O1200", BODY, header, now=NOW_TS)
    # the old body-only signature is no longer accepted
    assert not verify_signature(SECRET, NOW_TS, BODY, "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(), now=NOW_TS)


def test_verify_signature_refuses_a_replayed_old_timestamp() -> None:
    header = signature(SECRET, NOW_TS, BODY)
    assert not verify_signature(SECRET, NOW_TS, BODY, header, now=NOW_TS + 301)
    assert not verify_signature(SECRET, NOW_TS, BODY, header, now=NOW_TS - 301)  # from the future
    assert verify_signature(SECRET, NOW_TS, BODY, header, now=NOW_TS + 3000, tolerance=3600)


def test_server_error_is_retried(receiver: Receiver, postponed: EmailMessage) -> None:
    receiver.status = 503
    with pytest.raises(InfraError, match="after 2 attempts.*503") as err:
        send_with_retry(WebhookNotifier(receiver.url, SECRET), postponed, attempts=2, max_wait=0.001)
    assert not isinstance(err.value, DeliveryRefused)
    assert len(receiver.bodies) == 2
    assert "t0ken" not in str(err.value)  # the query (often a token) is not shown


def test_unreachable_is_infra_error(postponed: EmailMessage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with pytest.raises(InfraError, match="cannot reach webhook"):
        WebhookNotifier(f"http://{LOOPBACK}:{free_port()}/x", SECRET, timeout=2).send(postponed)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "127.0.0.1:8080/x", "http:///nohost"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(InputError, match="http"):
        WebhookNotifier(url, SECRET)


def test_repr_hides_secret_and_credentials() -> None:
    text = repr(WebhookNotifier("https://user:pw@hooks.example.org/in?token=abc", "s3cret"))
    assert "s3cret" not in text and "pw" not in text and "abc" not in text
    assert "https://hooks.example.org/in" in text


def test_needs_a_rendered_message() -> None:
    msg = EmailMessage()
    msg["Message-ID"] = "<x@example.org>"
    with pytest.raises(InputError, match="X-Upgrader"):
        WebhookNotifier("http://127.0.0.1:9/x", SECRET).send(msg)
