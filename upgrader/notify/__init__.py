"""Telling the users of a host about its maintenance window: render a notice into a mail (text,
HTML, and an iCalendar invite while the window is ahead) and deliver it by SMTP or webhook.

    msg = render(notice, plan.announce, plan.resolve_path(d) if (d := plan.announce.template_dir) else None)
    message_id = send_with_retry(SmtpNotifier(SmtpSettings.from_env()), msg)
"""

from __future__ import annotations

from upgrader.notify.delivery import DeliveryRefused, Notifier, send_with_retry
from upgrader.notify.message import render
from upgrader.notify.notice import Kind, Notice, uid_for
from upgrader.notify.smtp import SmtpNotifier, SmtpSettings
from upgrader.notify.webhook import WebhookNotifier

__all__ = [
    "DeliveryRefused",
    "Kind",
    "Notice",
    "Notifier",
    "SmtpNotifier",
    "SmtpSettings",
    "WebhookNotifier",
    "render",
    "send_with_retry",
    "uid_for",
]
