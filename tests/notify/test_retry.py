"""send_with_retry with fake notifiers: backoff on InfraError, give up with a hint."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage

import pytest
from notify_helpers import NOW

from upgrader.errors import InfraError, InputError
from upgrader.notify import DeliveryRefused, Notice, render, send_with_retry
from upgrader.plan import Announce


class FlakyNotifier:
    """Raises the given errors in turn, then delivers; fails loudly on more calls than planned."""

    def __init__(self, errors: list[Exception], *, succeed: bool = True) -> None:
        self.errors = list(errors)
        self.succeed = succeed
        self.calls = 0
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if not self.succeed:
            raise InfraError("connection refused", hint="is the relay up?")
        self.sent.append(message)
        return str(message["Message-ID"])


@pytest.fixture
def message(announce: Announce, make_notice: Callable[..., Notice]) -> EmailMessage:
    return render(make_notice(), announce, None, now=NOW)


def test_fails_twice_then_sends_once(message: EmailMessage) -> None:
    notifier = FlakyNotifier([InfraError("timeout"), InfraError("connection reset")])
    assert send_with_retry(notifier, message, attempts=5, max_wait=0.001) == message["Message-ID"]
    assert notifier.calls == 3 and notifier.sent == [message]


def test_always_failing_gives_up_after_n_attempts(message: EmailMessage) -> None:
    notifier = FlakyNotifier([], succeed=False)
    with pytest.raises(InfraError, match="after 4 attempts: connection refused") as err:
        send_with_retry(notifier, message, attempts=4, max_wait=0.001)
    assert notifier.calls == 4
    assert err.value.hint == "is the relay up?"
    assert isinstance(err.value.__cause__, InfraError)


def test_gives_a_hint_when_the_notifier_did_not(message: EmailMessage) -> None:
    notifier = FlakyNotifier([InfraError("x")] * 2)
    with pytest.raises(InfraError) as err:
        send_with_retry(notifier, message, attempts=2, max_wait=0.001)
    assert err.value.hint and "reachable" in err.value.hint


@pytest.mark.parametrize("error", [DeliveryRefused("550 no such user"), InputError("bad"), RuntimeError("bug")])
def test_other_errors_are_not_retried(message: EmailMessage, error: Exception) -> None:
    notifier = FlakyNotifier([error])
    with pytest.raises(type(error)):
        send_with_retry(notifier, message, attempts=5, max_wait=0.001)
    assert notifier.calls == 1
