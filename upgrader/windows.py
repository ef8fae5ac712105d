"""Cutover windows: when, seen from `now`, the plan's `window:` opens next. Pure logic, no I/O.

    slot = next_slot(plan.window, now)                  # Slot(start, end) in UTC, or None
    later = next_slot(plan.window, now, after=slot.start)  # postpone to the following window
    describe(plan.window)                               # "Sundays 01:30 Europe/Berlin, 2h"

Time rules (the same for `start`, `weekly`, `rrule` and `not_before`):

* Times in the plan are wall-clock times in `window.timezone`; an aware `start` / `not_before`
  is taken as is. Every slot is converted to UTC; the duration is absolute, so a 2h window that
  spans a DST change lasts 2 real hours (its local end is then 1h or 3h after its local start).
* A wall time that does not exist (spring forward: 02:30 in Europe/Berlin on the last Sunday of
  March) is shifted forward by the size of the gap: the slot opens at 03:30 local (01:30 UTC).
  This is PEP 495's `fold=0`: the offset in force before the transition is used.
* A wall time that exists twice (fall back: 02:30 in Europe/Berlin on the last Sunday of
  October) means its FIRST occurrence (still summer time, `fold=0`).

Selection (see `next_slot`): a slot is usable if it has not ended, starts after `after` (when
given), does not start before `not_before`, and is either open now or starts at least
`lead_time` from now (customers must be told that long in advance; an open slot was announced
earlier). The earliest usable slot wins.

RRULE windows: the rule text may lack the "RRULE:" prefix and may carry its own DTSTART line
(then COUNT counts from there). Occurrences are wall times in `window.timezone`; a DTSTART (or
UNTIL, RDATE, EXDATE) with "Z" or a TZID is converted to that zone's wall time first. Without a
DTSTART the rule is anchored on a fixed grid (periods counted from 2000-01-01 00:00, weekly ones
from Monday 2000-01-03), so unspecified parts default to the start of the period (FREQ=DAILY ->
00:00, FREQ=WEEKLY -> Monday 00:00, FREQ=MONTHLY -> the 1st) and INTERVAL=2 keeps a stable phase
whatever `now` is; COUNT without DTSTART is not meaningful (it counts from that moving anchor).
The search gives up two years past the earliest acceptable start, so an exhausted rule (COUNT,
UNTIL) gives None quickly. A rule that can never match, like BYMONTH=2;BYMONTHDAY=30, would make
dateutil scan up to year 9999 (seconds, for FREQ=DAILY or finer); the rule's dates are moved by
whole 400-year Gregorian cycles to just before 9999 instead, so that scan is short (see
`_rrule_walls`). `plan check` refuses such rules anyway (`first_rrule_wall`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import Window

__all__ = ["Slot", "describe", "first_rrule_wall", "next_slot", "rrule_anchor", "rrule_rules"]

UTC = timezone.utc

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_PLURAL = {
    "mon": "Mondays",
    "tue": "Tuesdays",
    "wed": "Wednesdays",
    "thu": "Thursdays",
    "fri": "Fridays",
    "sat": "Saturdays",
    "sun": "Sundays",
}

# How far past the earliest acceptable start we look for an occurrence before giving up.
_HORIZON = timedelta(days=732)
# Localizing can reorder wall times by up to the size of a DST gap (a few hours; Samoa skipped a
# whole day in 2011): start searching this much earlier, and after the first usable slot keep
# looking this much further for an earlier one.
_MARGIN = timedelta(days=2)


@dataclass(frozen=True)
class Slot:
    """One opening of the window: [start, end) in absolute time, both aware and in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"Slot.{name} must be timezone-aware, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))
        if self.end < self.start:
            raise ValueError(f"Slot ends before it starts: {self.start} .. {self.end}")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def contains(self, now: datetime) -> bool:
        """start <= now < end."""
        _require_aware(now, "now")
        return self.start <= now < self.end

    def remaining(self, now: datetime) -> timedelta:
        """How long the slot stays open after `now` (end - now), never negative."""
        _require_aware(now, "now")
        return max(self.end - now, timedelta(0))

    def local(self, tz: str | tzinfo) -> tuple[datetime, datetime]:
        """(start, end) as aware datetimes in time zone `tz` (an IANA name), for display."""
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        return self.start.astimezone(zone), self.end.astimezone(zone)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _to_utc(wall_or_aware: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall time in `zone` (fold=0: gaps shift forward, repeated times take the first
    occurrence) or an aware datetime -> aware UTC."""
    if wall_or_aware.tzinfo is not None and wall_or_aware.utcoffset() is not None:
        return wall_or_aware.astimezone(UTC)
    return wall_or_aware.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """Aware instant -> naive wall time in `zone`."""
    return instant.astimezone(zone).replace(tzinfo=None)


def next_slot(window: Window, now: datetime, *, after: datetime | None = None) -> Slot | None:
    """The window the cutover should use, seen at `now` (aware).

    - a slot open at `now` (start <= now < end) is returned as is, unless `after` excludes it;
    - `after` (aware): only slots whose start is strictly later (postpone to the NEXT window);
    - slots starting before `window.not_before` are skipped;
    - a slot that is not open yet and starts before now + lead_time is skipped (the customers
      must be told at least lead_time ahead); an open slot is never skipped for lead_time;
    - None if there is no such slot (an absolute window that has passed, an exhausted rrule).

    Among the usable slots the one that starts first is returned. Wall-clock/DST rules: see the
    module docstring (gaps shift forward by the gap, repeated times take the first occurrence).
    """
    _require_aware(now, "now")
    if after is not None:
        _require_aware(after, "after")
    zone = ZoneInfo(window.timezone)
    duration = window.duration
    lead = window.lead_time
    not_before = _to_utc(window.not_before, zone) if window.not_before is not None else None

    def usable(slot: Slot) -> bool:
        if slot.end <= now:
            return False
        if after is not None and slot.start <= after:
            return False
        if not_before is not None and slot.start < not_before:
            return False
        if not slot.contains(now) and slot.start < now + lead:
            return False
        return True

    if window.start is not None:
        start = _to_utc(window.start, zone)
        slot = Slot(start, start + duration)
        return slot if usable(slot) else None

    # Earliest start any usable slot can have (an open one started after now - duration).
    lowest = now - duration
    for bound in (after, not_before):
        if bound is not None and bound > lowest:
            lowest = bound
    search_from = _wall(lowest, zone) - _MARGIN
    give_up = _wall(max(lowest, now + lead), zone) + _HORIZON

    if window.weekly is not None:
        walls = _weekly_walls(window.weekly.weekday, window.weekly.time, search_from)
    elif window.rrule is not None:
        walls = _rrule_walls(window.rrule, zone, search_from, end=give_up)
    else:  # pragma: no cover - the plan model requires one of start/weekly/rrule
        raise ValueError("the window has none of start, weekly, rrule")

    best: Slot | None = None
    stop_after: datetime | None = None
    for wall in walls:
        if wall < search_from:
            continue
        if wall > give_up or (stop_after is not None and wall > stop_after):
            break
        start = _to_utc(wall, zone)
        slot = Slot(start, start + duration)
        if usable(slot):
            if best is None or slot.start < best.start:
                best = slot
            if stop_after is None:
                stop_after = wall + _MARGIN
    return best


# --------------------------------------------------------------------------------------------
# Occurrence generators: naive wall times in the window's zone, ascending
# --------------------------------------------------------------------------------------------


def _parse_hhmm(text: str) -> time:
    hours, minutes = text.strip().split(":")
    return time(int(hours), int(minutes))


def _weekly_walls(weekday: str, hhmm: str, search_from: datetime) -> Iterator[datetime]:
    at = _parse_hhmm(hhmm)
    day: date = search_from.date()
    day += timedelta(days=(_WEEKDAYS.index(weekday) - day.weekday()) % 7)
    while True:
        yield datetime.combine(day, at)
        day += timedelta(days=7)


def _rrule_text(text: str) -> str:
    """The rule as rrulestr takes it: "RRULE:" added to a bare rule (as the plan validator does)."""
    text = text.strip()
    return text if text.upper().startswith(("RRULE:", "DTSTART")) else "RRULE:" + text


def _rrule_walls(text: str, zone: ZoneInfo, search_from: datetime, *, end: datetime | None = None) -> Iterator[datetime]:
    """The rule's occurrences as naive wall times in `zone`, ascending, from about `search_from`.

    With `end` the walk is bounded: nothing after `end` is produced, and the search takes bounded
    time even for a rule that can never match. dateutil only gives up on such a rule at year 9999
    (seconds of scanning), so every date is moved forward by whole 400-year Gregorian cycles, which
    repeat weekdays, leap days and period phases exactly, until `end` lies just before 9999; the
    walls are moved back. (BYEASTER, a dateutil extension, does not repeat that way: not moved.)"""
    from dateutil.rrule import rrule, rruleset, rrulestr

    source = _rrule_text(text)
    own_dtstart = "DTSTART" in source.upper()
    parsed = rrulestr(source, dtstart=_EPOCH, cache=False)
    rules = list(parsed._rrule) + list(parsed._exrule) if isinstance(parsed, rruleset) else [parsed]
    years = _cycle_shift(end, rules) if end is not None else 0

    def naive(value: datetime) -> datetime:
        if value.tzinfo is not None and value.utcoffset() is not None:
            return _wall(value, zone)
        return value.replace(tzinfo=None)

    def fix(rule: rrule) -> rrule | None:
        dtstart = naive(rule._dtstart)
        until = naive(rule._until) if rule._until is not None else None
        if own_dtstart:
            if rule._count is None:  # COUNT counts from DTSTART: then it must stay put
                dtstart = _align(dtstart, search_from, rule._freq, rule._interval, own=True)
        else:
            dtstart = _align(_epoch_for(rule._freq), search_from, rule._freq, rule._interval, own=False)
        if end is not None:
            if dtstart > end:
                return None  # nothing of it can fall before `end`
            until = end if until is None or until > end else until
            dtstart, until = _add_years(dtstart, years), _add_years(until, years)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return rule.replace(dtstart=dtstart, until=until)

    def dates(values: list[datetime]) -> list[datetime]:
        walls = [naive(v) for v in values]
        return [_add_years(w, years) for w in walls if end is None or w <= end]

    if isinstance(parsed, rruleset):
        result = rruleset(cache=False)
        for rule in parsed._rrule:
            if (fixed := fix(rule)) is not None:
                result.rrule(fixed)
        for rule in parsed._exrule:
            if (fixed := fix(rule)) is not None:
                result.exrule(fixed)
        for value in dates(parsed._rdate):
            result.rdate(value)
        for value in dates(parsed._exdate):
            result.exdate(value)
        walls: Iterator[datetime] = iter(result)
    else:
        fixed = fix(parsed)
        walls = iter(fixed) if fixed is not None else iter(())
    if end is None:
        return walls
    return (_add_years(w, -years) for w in walls if w <= _add_years(end, years))


def first_rrule_wall(text: str, timezone: str, start: datetime, end: datetime) -> datetime | None:
    """The first occurrence of rule `text` in [start, end] (naive wall times in `timezone`), or
    None; in bounded time (about 0.5 s at worst, for a rule that can never match)."""
    for wall in _rrule_walls(text, ZoneInfo(timezone), start, end=end):
        if wall >= start:
            return wall
    return None


def rrule_rules(text: str) -> list[Any]:
    """The dateutil rrule objects of rule `text` (its RRULE lines, without EXRULEs), as parsed."""
    from dateutil.rrule import rruleset, rrulestr

    parsed = rrulestr(_rrule_text(text), dtstart=_EPOCH, cache=False)
    return list(parsed._rrule) if isinstance(parsed, rruleset) else [parsed]


def rrule_anchor(text: str, timezone: str) -> datetime | None:
    """The rule's own DTSTART as a naive wall time in `timezone` (the earliest, for a set), or
    None when it has none (then it runs on the fixed grid from 2000-01-01)."""
    if "DTSTART" not in _rrule_text(text).upper():
        return None
    zone = ZoneInfo(timezone)
    starts = [_wall(r._dtstart, zone) if r._dtstart.tzinfo is not None else r._dtstart for r in rrule_rules(text)]
    return min(starts) if starts else None


# Dates repeat exactly every 400 Gregorian years (146097 days = 20871 weeks = 4800 months).
_CYCLE_YEARS = 400
_LAST_YEAR = 9998  # dateutil stops at 9999; keep a year for DST and the margin


def _cycle_shift(end: datetime, rules: list[Any]) -> int:
    if any(rule._byeaster for rule in rules):
        return 0
    return _CYCLE_YEARS * max(0, (_LAST_YEAR - end.year) // _CYCLE_YEARS)


def _add_years(value: datetime, years: int) -> datetime:
    return value.replace(year=value.year + years) if years else value


_EPOCH = datetime(2000, 1, 1)
_EPOCH_MONDAY = datetime(2000, 1, 3)


def _epoch_for(freq: int) -> datetime:
    from dateutil.rrule import WEEKLY

    return _EPOCH_MONDAY if freq == WEEKLY else _EPOCH


def _add_months(value: datetime, months: int) -> datetime:
    index = value.year * 12 + (value.month - 1) + months
    return value.replace(year=index // 12, month=index % 12 + 1)


def _align(base: datetime, target: datetime, freq: int, interval: int, *, own: bool) -> datetime:
    """The latest base + k * (interval periods) that is <= target; k >= 0 when `own` (base is the
    rule's own DTSTART), any integer for the fixed grid. Shifting by whole periods keeps the
    rule's occurrences (and the defaults dateutil takes from dtstart) unchanged; where it could
    not (a monthly DTSTART on the 29th-31st, a yearly one on Feb 29) the base is kept."""
    from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, SECONDLY, WEEKLY, YEARLY

    if own and target <= base:
        return base
    if freq in (YEARLY, MONTHLY):
        if own and (base.day > 28 if freq == MONTHLY else (base.month, base.day) == (2, 29)):
            return base
        step = interval * (12 if freq == YEARLY else 1)
        k = ((target.year - base.year) * 12 + (target.month - base.month)) // step
        shifted = _add_months(base, k * step)
        if shifted > target:  # same month, later day/time
            shifted = _add_months(base, (k - 1) * step) if (k > 0 or not own) else base
        return shifted
    seconds = {WEEKLY: 7 * 86400, DAILY: 86400, HOURLY: 3600, MINUTELY: 60, SECONDLY: 1}[freq] * interval
    k = int((target - base).total_seconds() // seconds)  # floor, also for negative differences
    return base + timedelta(seconds=k * seconds)


# --------------------------------------------------------------------------------------------
# Human text
# --------------------------------------------------------------------------------------------


def _format_wall(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S" if value.second else "%Y-%m-%d %H:%M")


def describe(window: Window) -> str:
    """Human text for announcements and `plan show`:
    "Sundays 01:30 Europe/Berlin, 2h", "2026-11-29 01:30 Europe/Berlin, 30m",
    "RRULE:FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0 Europe/Berlin, 2h"; a not_before and a
    lead_time are appended when set ("..., not before 2026-05-01 00:00, lead time 7d")."""
    zone = ZoneInfo(window.timezone)
    if window.start is not None:
        start = window.start
        if start.tzinfo is not None and start.utcoffset() is not None:
            start = _wall(start, zone)
        when = _format_wall(start)
    elif window.weekly is not None:
        when = f"{_WEEKDAY_PLURAL[window.weekly.weekday]} {window.weekly.time.strip()}"
    elif window.rrule is not None:
        when = " ".join(_rrule_text(window.rrule).split())
    else:  # pragma: no cover
        when = "?"
    text = f"{when} {window.timezone}, {format_duration(window.duration)}"
    if window.not_before is not None:
        nb = window.not_before
        if nb.tzinfo is not None and nb.utcoffset() is not None:
            nb = _wall(nb, zone)
        text += f", not before {_format_wall(nb)}"
    if window.lead_time:
        text += f", lead time {format_duration(window.lead_time)}"
    return text
