"""Notice + plan's announce settings -> one EmailMessage: text and HTML alternatives, and for a
window still ahead an invite.ics (METHOD:PUBLISH). Headers are set through the email package's
header registry after header.py has checked every value; nothing is concatenated into a header."""

from __future__ import annotations

from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from upgrader.errors import InputError
from upgrader.notify import calendar
from upgrader.notify.headers import address, has_control, single_line
from upgrader.notify.notice import Notice, uid_for
from upgrader.notify.templates import Templates
from upgrader.plan import Announce

# Machine-readable copies of the notice, for filters and for WebhookNotifier (same port).
HEADER_PREFIX = "X-Upgrader-"


def forecast_text(seconds: float | None) -> str | None:
    """'about 40 seconds', 'about 3 minutes', 'about 1 hour 30 minutes'."""
    if seconds is None:
        return None
    if seconds < 60:
        n = max(1, round(seconds))
        return f"about {n} second{'s' if n != 1 else ''}"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    hours, rest = divmod(minutes, 60)
    text = f"about {hours} hour{'s' if hours != 1 else ''}"
    return text + (f" {rest} minute{'s' if rest != 1 else ''}" if rest else "")


def _local_text(moment: datetime, notice: Notice) -> str:
    return moment.astimezone(notice.zone()).strftime("%a %d %b %Y, %H:%M %Z")


def context(notice: Notice) -> dict[str, Any]:
    """The variables every template sees (documented in templates/announce/README.md)."""
    zone = notice.zone()
    start = notice.window_start.astimezone(zone)
    end = notice.window_end.astimezone(zone)
    return {
        "kind": notice.kind.value,
        "host": notice.host,
        "run_id": notice.run_id,
        "uid": uid_for(notice.run_id, notice.host),
        "sequence": notice.sequence,
        "timezone": notice.timezone,
        "start": start,
        "end": end,
        "start_utc": notice.window_start.astimezone(timezone.utc),
        "end_utc": notice.window_end.astimezone(timezone.utc),
        "start_text": _local_text(start, notice),
        "end_text": _local_text(end, notice) if end.date() != start.date() else end.strftime("%H:%M %Z"),
        "reason": notice.reason,
        "forecast_seconds": notice.forecast_seconds,
        "forecast_text": forecast_text(notice.forecast_seconds),
        "extra": dict(notice.extra),
    }


def _subject(notice: Notice, announce: Announce, templates: Templates, ctx: dict[str, Any]) -> str:
    if announce.subject is not None:
        text = templates.render_string("announce.subject in the plan", announce.subject, ctx)
        what = "announce.subject (after rendering)"
    else:
        name = f"{notice.kind.value}.subject.j2"
        text = templates.render(name, ctx)
        what = f"the subject rendered from {templates.origin(name)}"
    # The one newline that ends a template file is not part of the subject; any other is refused.
    return single_line(what, text.removesuffix("\n").removesuffix("\r").strip(" "))


def _machine_headers(msg: EmailMessage, notice: Notice) -> None:
    reason = None if notice.reason is None else " ".join("".join(" " if has_control(c) else c for c in notice.reason).split())
    values = {
        "Kind": notice.kind.value,
        "Host": notice.host,
        "Run-Id": notice.run_id,
        "Window-Start": notice.window_start.astimezone(timezone.utc).isoformat(),
        "Window-End": notice.window_end.astimezone(timezone.utc).isoformat(),
        "Sequence": str(notice.sequence),
        "Reason": reason,
    }
    for name, value in values.items():
        if value:
            msg[HEADER_PREFIX + name] = value


def render(
    notice: Notice, announce: Announce, template_dir: Path | None, *, now: datetime | None = None
) -> EmailMessage:
    """The mail for `notice`. `template_dir` is announce.template_dir already resolved against
    the plan file (plan.resolve_path); None uses the packaged defaults. `now` (aware) stamps the
    Date header and DTSTAMP; default: the current time.

    Raises InputError for a bad template, an undefined template variable, or any value that
    would inject a header (CR/LF/control characters in subject, sender, recipients, host)."""
    notice.check()
    single_line("host", notice.host)
    single_line("run_id", notice.run_id)
    sender = address("announce.sender", announce.sender)
    if not announce.to:
        raise InputError("announce.to has no recipients", hint="list at least one address under announce.to")
    recipients = [address(f"announce.to[{i}]", to) for i, to in enumerate(announce.to)]
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)

    templates = Templates(template_dir)
    ctx = context(notice)
    subject = _subject(notice, announce, templates, ctx)
    text = templates.render(f"{notice.kind.value}.txt.j2", ctx)
    html = templates.render(f"{notice.kind.value}.html.j2", ctx)

    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = recipients
    msg["Subject"] = subject
    msg["Date"] = now
    msg["Message-ID"] = make_msgid(idstring=notice.kind.value, domain=sender.domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    _machine_headers(msg, notice)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    if notice.kind.has_invite:
        ics = calendar.invite(notice, now=now, forecast_text=ctx["forecast_text"])
        msg.add_attachment(
            ics.decode("utf-8"),
            subtype="calendar",
            filename="invite.ics",
            params={"method": "PUBLISH", "name": "invite.ics"},
        )
    return msg
