"""The iCalendar attachment: METHOD:PUBLISH with one VEVENT for the maintenance window.
The UID is stable per run and host and SEQUENCE grows with each reschedule, so a calendar that
imported the announcement moves the event when the postponement arrives."""

from __future__ import annotations

from datetime import datetime, timezone

import icalendar

from upgrader.notify.notice import Notice, uid_for

PRODID = "-//upgrader//maintenance notices//EN"


def summary(notice: Notice) -> str:
    return f"Maintenance of {notice.host}: short downtime"


def description(notice: Notice, forecast_text: str | None) -> str:
    lines = [f"{notice.host} is upgraded in this window; it stays reachable except for a short interruption."]
    if forecast_text:
        lines.append(f"Expected interruption: {forecast_text}.")
    if notice.reason:
        lines.append(f"Rescheduled: {notice.reason}")
    lines.append(f"Run {notice.run_id}, update {notice.sequence}.")
    return "\n".join(lines)


def invite(notice: Notice, *, now: datetime, forecast_text: str | None) -> bytes:
    """The .ics text (CRLF lines, as RFC 5545 wants) for an announce/reminder/postponed notice;
    a postponed notice carries the new window."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", uid_for(notice.run_id, notice.host))
    event.add("sequence", notice.sequence)
    event.add("dtstamp", now.astimezone(timezone.utc))
    event.add("dtstart", notice.window_start.astimezone(timezone.utc))
    event.add("dtend", notice.window_end.astimezone(timezone.utc))
    event.add("summary", summary(notice))
    event.add("description", description(notice, forecast_text))
    event.add("status", "CONFIRMED")
    event.add("transp", "TRANSPARENT")  # the users are not busy; the host is
    cal.add_component(event)
    return cal.to_ical()
