"""The delivery port and retrying around it. A Notifier raises InfraError when the transport is
unreachable or failed (worth retrying) and DeliveryRefused when it was refused for good
(authentication, a 5xx reply, a recipient refused): retrying that would only repeat the
refusal or, worse, mail the recipients that did get it once more."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol

import tenacity

from upgrader.errors import InfraError


class DeliveryRefused(InfraError):
    """The mail server or webhook refused the notice permanently; send_with_retry does not retry it."""


class Notifier(Protocol):
    def send(self, message: EmailMessage) -> str:
        """Deliver `message`; return its delivery id (the Message-ID). Raise InfraError on failure."""
        ...


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, InfraError) and not isinstance(exc, DeliveryRefused)


def send_with_retry(notifier: Notifier, message: EmailMessage, attempts: int = 5, max_wait: float = 30) -> str:
    """notifier.send(message), retried with exponential backoff (1 s, 2 s, 4 s ... capped at
    max_wait) while it raises InfraError; after the last attempt an InfraError with a hint.
    DeliveryRefused and every other error are raised at once."""
    return retry_delivery(lambda: notifier.send(message), f"the notice {message.get('Subject', '')!r}", attempts, max_wait)


def retry_delivery(deliver: Callable[[], str], what: str, attempts: int = 5, max_wait: float = 30) -> str:
    """deliver(), retried like send_with_retry; `what` names the notice in the final error."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=1, max=max_wait),
        retry=tenacity.retry_if_exception(_transient),
        reraise=False,
    )
    try:
        return retrying(deliver)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        hint = last.hint if isinstance(last, InfraError) and last.hint else None
        raise InfraError(
            f"could not deliver {what} after {attempts} attempts: {last}",
            hint=hint or "check that the mail server (UPGRADER_SMTP_HOST/PORT) or webhook is reachable; the run itself is not affected",
        ) from last
