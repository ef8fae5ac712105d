"""What a notification says: the kind, the host, the run and the window. Pure data; the
message, calendar and delivery modules turn it into mail or a webhook call."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from upgrader.errors import InputError


class Kind(str, Enum):
    ANNOUNCE = "announce"
    REMINDER = "reminder"
    DONE = "done"
    POSTPONED = "postponed"
    ROLLED_BACK = "rolled_back"

    @property
    def has_invite(self) -> bool:
        """Whether the mail carries the window as an iCalendar event (the window is still ahead)."""
        return self in (Kind.ANNOUNCE, Kind.REMINDER, Kind.POSTPONED)


@dataclass(frozen=True)
class Notice:
    kind: Kind
    host: str
    run_id: str
    window_start: datetime
    window_end: datetime
    timezone: str
    sequence: int
    reason: str | None = None
    forecast_seconds: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def zone(self) -> ZoneInfo:
        """The display time zone; InputError if it is not an IANA name."""
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InputError(
                f"unknown time zone {self.timezone!r} for the notice about {self.host}",
                hint='use an IANA name such as "Europe/Berlin" or "UTC"',
            ) from None

    def check(self) -> None:
        """Raise InputError if the window cannot be announced (naive or empty)."""
        for name, value in (("window_start", self.window_start), ("window_end", self.window_end)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise InputError(
                    f"{name} of the notice about {self.host} has no time zone ({value.isoformat()})",
                    hint="pass timezone-aware datetimes (a bug in the caller)",
                )
        if self.window_end <= self.window_start:
            raise InputError(
                f"the window for {self.host} ends ({self.window_end.isoformat()}) "
                f"before it starts ({self.window_start.isoformat()})",
                hint="check window.duration in the plan",
            )
        if self.sequence < 0:
            raise InputError(f"the notice sequence must be >= 0, got {self.sequence}")
        self.zone()


def uid_for(run_id: str, host: str) -> str:
    """The iCalendar UID of a run's maintenance event: the same for the announcement, the
    reminder and every postponement, so calendars update the one event."""
    return f"{run_id}.{host}@upgrader"
