"""upgrader.windows: next_slot / Slot / describe. Pure logic; time is passed in or frozen."""

from __future__ import annotations

import time as _time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader.plan import Window, parse_plan
from upgrader.windows import Slot, describe, first_rrule_wall, next_slot

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def window(**fields) -> Window:
    fields.setdefault("duration", "2h")
    return Window.model_validate(fields)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(slot: Slot, tz: str) -> tuple[datetime, datetime]:
    start, end = slot.local(tz)
    return start.replace(tzinfo=None), end.replace(tzinfo=None)


# --------------------------------------------------------------------------------------------
# Slot
# --------------------------------------------------------------------------------------------


def test_slot_contains_remaining_local():
    slot = Slot(utc(2026, 6, 7, 1, 0), utc(2026, 6, 7, 3, 0))
    assert not slot.contains(utc(2026, 6, 7, 0, 59))
    assert slot.contains(utc(2026, 6, 7, 1, 0))
    assert slot.contains(utc(2026, 6, 7, 2, 59))
    assert not slot.contains(utc(2026, 6, 7, 3, 0))
    assert slot.remaining(utc(2026, 6, 7, 2, 30)) == timedelta(minutes=30)
    assert slot.remaining(utc(2026, 6, 7, 5, 0)) == timedelta(0)
    assert local(slot, "Europe/Berlin") == (datetime(2026, 6, 7, 3, 0), datetime(2026, 6, 7, 5, 0))
    assert slot.duration == timedelta(hours=2)


def test_slot_normalizes_to_utc_and_refuses_naive():
    slot = Slot(datetime(2026, 6, 7, 3, 0, tzinfo=BERLIN), datetime(2026, 6, 7, 5, 0, tzinfo=BERLIN))
    assert slot.start == utc(2026, 6, 7, 1, 0) and slot.start.tzinfo is UTC
    with pytest.raises(ValueError):
        Slot(datetime(2026, 6, 7, 1, 0), utc(2026, 6, 7, 3, 0))
    with pytest.raises(ValueError):
        next_slot(window(weekly={"weekday": "sun", "time": "01:30"}), datetime(2026, 6, 1))


# --------------------------------------------------------------------------------------------
# Absolute start
# --------------------------------------------------------------------------------------------

ABSOLUTE = {"timezone": "Europe/Berlin", "duration": "30m", "start": datetime(2026, 11, 29, 1, 30)}


def test_absolute_future_naive_is_in_the_windows_timezone():
    slot = next_slot(window(**ABSOLUTE), utc(2026, 11, 1))
    assert slot == Slot(utc(2026, 11, 29, 0, 30), utc(2026, 11, 29, 1, 0))  # CET = UTC+1


def test_absolute_aware_start_is_taken_as_is():
    w = window(timezone="Europe/Berlin", duration="30m", start=datetime(2026, 11, 29, 1, 30, tzinfo=UTC))
    assert next_slot(w, utc(2026, 11, 1)) == Slot(utc(2026, 11, 29, 1, 30), utc(2026, 11, 29, 2, 0))
    # and via a plan-style ISO string with an offset
    w = window(timezone="Europe/Berlin", duration="30m", start="2026-11-29T01:30:00-05:00")
    assert next_slot(w, utc(2026, 11, 1)).start == utc(2026, 11, 29, 6, 30)


def test_absolute_open_and_passed():
    w = window(**ABSOLUTE)
    open_slot = next_slot(w, utc(2026, 11, 29, 0, 45))
    assert open_slot is not None and open_slot.contains(utc(2026, 11, 29, 0, 45))
    assert open_slot.remaining(utc(2026, 11, 29, 0, 45)) == timedelta(minutes=15)
    assert next_slot(w, utc(2026, 11, 29, 1, 0)) is None  # now == end: passed
    assert next_slot(w, utc(2027, 1, 1)) is None
    assert next_slot(w, utc(2026, 11, 29, 0, 45), after=utc(2026, 11, 29, 0, 30)) is None  # no next one


def test_absolute_with_frozen_clock():
    with time_machine.travel(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), tick=False):
        now = datetime.now(UTC)
        assert next_slot(window(**ABSOLUTE), now).start == utc(2026, 11, 29, 0, 30)


# --------------------------------------------------------------------------------------------
# Weekly
# --------------------------------------------------------------------------------------------

SUNDAYS = {"timezone": "Europe/Berlin", "weekly": {"weekday": "sun", "time": "01:30"}}


def test_weekly_later_today():
    # Sunday 2026-06-07, 00:00 local (= Sat 22:00 UTC)
    slot = next_slot(window(**SUNDAYS), datetime(2026, 6, 7, 0, 0, tzinfo=BERLIN))
    assert local(slot, "Europe/Berlin") == (datetime(2026, 6, 7, 1, 30), datetime(2026, 6, 7, 3, 30))
    assert slot.start == utc(2026, 6, 6, 23, 30)


def test_weekly_open_now_is_returned():
    now = datetime(2026, 6, 7, 2, 0, tzinfo=BERLIN)
    slot = next_slot(window(**SUNDAYS), now)
    assert slot.contains(now)
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 7, 1, 30)


def test_weekly_next_week_after_it_ended():
    slot = next_slot(window(**SUNDAYS), datetime(2026, 6, 7, 3, 30, tzinfo=BERLIN))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 14, 1, 30)


def test_weekly_from_another_weekday():
    slot = next_slot(window(**SUNDAYS), datetime(2026, 6, 10, 12, 0, tzinfo=BERLIN))  # a Wednesday
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 14, 1, 30)


def test_weekly_after_postpones_to_the_following_slot():
    w = window(**SUNDAYS)
    now = datetime(2026, 6, 7, 2, 0, tzinfo=BERLIN)
    current = next_slot(w, now)
    following = next_slot(w, now, after=current.start)
    assert following.start - current.start == timedelta(weeks=1)
    assert next_slot(w, now, after=following.start).start - following.start == timedelta(weeks=1)


def test_weekly_from_a_plan_file():
    minimal = (Path(__file__).resolve().parent.parent / "plan" / "fixtures" / "minimal.yml").read_text()
    text = minimal + """
window:
  timezone: America/New_York
  weekly: {weekday: sat, time: "23:00"}
  duration: 3h
"""
    plan = parse_plan(text, "w.yml")
    slot = next_slot(plan.window, datetime(2026, 7, 1, tzinfo=UTC))
    assert local(slot, "America/New_York") == (datetime(2026, 7, 4, 23, 0), datetime(2026, 7, 5, 2, 0))


# --------------------------------------------------------------------------------------------
# DST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "weekday", "gap_day", "expected_utc"),
    [
        ("Europe/Berlin", "sun", datetime(2026, 3, 29), utc(2026, 3, 29, 1, 30)),  # last Sunday of March
        ("America/New_York", "sun", datetime(2026, 3, 8), utc(2026, 3, 8, 7, 30)),  # second Sunday of March
    ],
)
def test_spring_forward_gap_shifts_forward_by_the_gap(tz, weekday, gap_day, expected_utc):
    w = window(timezone=tz, weekly={"weekday": weekday, "time": "02:30"})
    slot = next_slot(w, datetime.combine(gap_day.date(), datetime.min.time(), ZoneInfo(tz)) - timedelta(days=1))
    assert slot.start == expected_utc
    assert local(slot, tz)[0] == gap_day.replace(hour=3, minute=30)  # 02:30 does not exist: 03:30
    assert slot.end - slot.start == timedelta(hours=2)


@pytest.mark.parametrize(
    ("tz", "hhmm", "day", "expected_utc", "offset"),
    [
        ("Europe/Berlin", "02:30", datetime(2026, 10, 25), utc(2026, 10, 25, 0, 30), timedelta(hours=2)),
        ("America/New_York", "01:30", datetime(2026, 11, 1), utc(2026, 11, 1, 5, 30), timedelta(hours=-4)),
    ],
)
def test_fall_back_repeated_time_uses_the_first_occurrence(tz, hhmm, day, expected_utc, offset):
    w = window(timezone=tz, weekly={"weekday": "sun", "time": hhmm})
    slot = next_slot(w, datetime.combine(day.date(), datetime.min.time(), ZoneInfo(tz)) - timedelta(days=1))
    assert slot.start == expected_utc
    start_local = slot.local(tz)[0]
    assert start_local.utcoffset() == offset  # still summer time
    assert start_local.replace(tzinfo=None) == day.replace(hour=int(hhmm[:2]), minute=int(hhmm[3:]))


def test_two_hour_window_across_dst_end_lasts_two_real_hours():
    w = window(timezone="Europe/Berlin", duration="2h", weekly={"weekday": "sun", "time": "01:30"})
    slot = next_slot(w, utc(2026, 10, 24, 12))
    assert slot.end - slot.start == timedelta(hours=2)
    start, end = slot.local("Europe/Berlin")
    assert start.replace(tzinfo=None) == datetime(2026, 10, 25, 1, 30) and start.utcoffset() == timedelta(hours=2)
    assert end.replace(tzinfo=None) == datetime(2026, 10, 25, 2, 30) and end.utcoffset() == timedelta(hours=1)


def test_two_hour_window_across_dst_start_lasts_two_real_hours():
    w = window(timezone="America/New_York", duration="2h", weekly={"weekday": "sun", "time": "01:30"})
    slot = next_slot(w, utc(2026, 3, 7, 12))
    assert slot.end - slot.start == timedelta(hours=2)
    assert local(slot, "America/New_York") == (datetime(2026, 3, 8, 1, 30), datetime(2026, 3, 8, 4, 30))


def test_naive_absolute_start_in_the_gap_and_in_the_fold():
    gap = window(timezone="Europe/Berlin", start=datetime(2026, 3, 29, 2, 30))
    assert next_slot(gap, utc(2026, 1, 1)).start == utc(2026, 3, 29, 1, 30)
    fold = window(timezone="Europe/Berlin", start=datetime(2026, 10, 25, 2, 30))
    assert next_slot(fold, utc(2026, 1, 1)).start == utc(2026, 10, 25, 0, 30)


# --------------------------------------------------------------------------------------------
# RRULE
# --------------------------------------------------------------------------------------------

FIRST_SUNDAY = {"timezone": "Europe/Berlin", "rrule": "FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0"}


def test_rrule_monthly_first_sunday():
    slot = next_slot(window(**FIRST_SUNDAY), utc(2026, 6, 10))
    assert local(slot, "Europe/Berlin") == (datetime(2026, 7, 5, 3, 0), datetime(2026, 7, 5, 5, 0))
    assert slot.start == utc(2026, 7, 5, 1, 0)
    # in winter the same wall time is another UTC time
    assert next_slot(window(**FIRST_SUNDAY), utc(2026, 11, 10)).start == utc(2026, 12, 6, 2, 0)


def test_rrule_prefix_optional_and_open_slot_returned():
    w = window(timezone="Europe/Berlin", rrule="RRULE:FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0")
    now = datetime(2026, 7, 5, 4, 0, tzinfo=BERLIN)
    slot = next_slot(w, now)
    assert slot.contains(now) and local(slot, "Europe/Berlin")[0] == datetime(2026, 7, 5, 3, 0)
    following = next_slot(w, now, after=slot.start)
    assert local(following, "Europe/Berlin")[0] == datetime(2026, 8, 2, 3, 0)


def test_rrule_count_exhausted_is_none():
    w = window(timezone="Europe/Berlin", rrule="DTSTART:20260101T030000\nRRULE:FREQ=WEEKLY;COUNT=3")
    assert local(next_slot(w, utc(2025, 12, 1)), "Europe/Berlin")[0] == datetime(2026, 1, 1, 3, 0)
    assert local(next_slot(w, utc(2026, 1, 10)), "Europe/Berlin")[0] == datetime(2026, 1, 15, 3, 0)
    started = _time.perf_counter()
    assert next_slot(w, utc(2026, 1, 16)) is None
    assert next_slot(w, utc(2026, 1, 16, 12), after=utc(2026, 1, 15)) is None
    assert _time.perf_counter() - started < 1


def test_rrule_until_exhausted_is_none():
    w = window(timezone="UTC", rrule="FREQ=DAILY;BYHOUR=3;UNTIL=20260301T000000")
    assert next_slot(w, utc(2026, 2, 27, 12)).start == utc(2026, 2, 28, 3)
    assert next_slot(w, utc(2026, 2, 28, 12)) is None


def test_rrule_spring_forward_and_fall_back():
    w = window(timezone="Europe/Berlin", rrule="FREQ=WEEKLY;BYDAY=SU;BYHOUR=2;BYMINUTE=30")
    assert next_slot(w, utc(2026, 3, 28)).start == utc(2026, 3, 29, 1, 30)  # 03:30 CEST
    assert next_slot(w, utc(2026, 10, 24)).start == utc(2026, 10, 25, 0, 30)  # first 02:30
    ny = window(timezone="America/New_York", rrule="FREQ=YEARLY;BYMONTH=3;BYDAY=2SU;BYHOUR=2;BYMINUTE=30")
    assert next_slot(ny, utc(2026, 1, 1)).start == utc(2026, 3, 8, 7, 30)  # 03:30 EDT


def test_rrule_without_dtstart_has_a_stable_phase():
    """INTERVAL=2 without DTSTART: the same fortnight grid whatever `now` is."""
    w = window(timezone="Europe/Berlin", rrule="FREQ=WEEKLY;INTERVAL=2;BYDAY=SU;BYHOUR=3")
    walls = sorted({local(next_slot(w, utc(2026, 6, 1) + timedelta(days=d)), "Europe/Berlin")[0] for d in range(30)})
    assert len(walls) >= 2
    assert all(wall.weekday() == 6 and wall.hour == 3 for wall in walls)
    assert all(b - a == timedelta(weeks=2) for a, b in zip(walls, walls[1:]))


def test_rrule_old_dtstart_high_frequency_matches_dateutil_and_is_fast():
    text = "DTSTART:20200101T030000\nRRULE:FREQ=MINUTELY;INTERVAL=7"
    w = window(timezone="UTC", duration="5m", rrule=text)
    now = utc(2026, 3, 20, 12, 0, 30)
    started = _time.perf_counter()
    slot = next_slot(w, now)
    assert _time.perf_counter() - started < 1
    expected = rrulestr(text).after(now.replace(tzinfo=None) - timedelta(minutes=5))
    assert slot.start.replace(tzinfo=None) == expected


def test_rrule_that_never_matches_gives_none_quickly():
    """plan check refuses such rules; next_slot still must not scan to year 9999 (4-10 s before)."""
    for freq in ("DAILY", "HOURLY", "MINUTELY", "SECONDLY"):
        w = Window.model_construct(timezone="UTC", duration=timedelta(hours=1), rrule=f"FREQ={freq};BYMONTH=2;BYMONTHDAY=30",
                                   start=None, weekly=None, not_before=None, lead_time=timedelta(0))
        started = _time.perf_counter()
        assert next_slot(w, utc(2026, 12, 1)) is None
        assert _time.perf_counter() - started < 1.5, freq


@pytest.mark.parametrize(
    "text",
    [
        "DTSTART:20200101T030000\nRRULE:FREQ=HOURLY;INTERVAL=7",
        "DTSTART:20261130T030000\nRRULE:FREQ=MINUTELY;INTERVAL=7;BYHOUR=3,4",
        "DTSTART:20200229T030000\nRRULE:FREQ=YEARLY",
        "DTSTART:20190103T010000\nRRULE:FREQ=DAILY;INTERVAL=5;BYMONTH=2,3",
        "DTSTART:20210104T030000\nRRULE:FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,TH",
        "DTSTART:20200131T030000\nRRULE:FREQ=MONTHLY;INTERVAL=5;BYMONTHDAY=-1",
        "DTSTART:20200101T000000\nRRULE:FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13",
        "DTSTART:20240101T000000\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",
        "DTSTART:20200101T000000\nRRULE:FREQ=HOURLY;INTERVAL=7;BYSETPOS=1;COUNT=40000",
        "DTSTART:20260101T030000\nRRULE:FREQ=WEEKLY;UNTIL=20270101T000000\nEXDATE:20261203T030000\nRDATE:20301224T030000",
    ],
)
@pytest.mark.parametrize("start", [datetime(2026, 12, 1, 12, 0), datetime(2027, 2, 27, 0, 0), datetime(2031, 1, 1)])
def test_first_rrule_wall_agrees_with_dateutil(text, start):
    """The bounded search (dates moved by 400-year cycles) finds what plain dateutil finds."""
    end = start + timedelta(days=3653)
    expected = rrulestr(text, forceset=True).after(start, inc=True)
    found = first_rrule_wall(text, "UTC", start, end)
    assert found == (expected if expected is not None and expected <= end else None)


def test_rrule_dtstart_in_utc_is_converted():
    w = window(timezone="Europe/Berlin", rrule="DTSTART:20260105T020000Z\nRRULE:FREQ=MONTHLY;BYMONTHDAY=5")
    slot = next_slot(w, utc(2026, 6, 1))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 5, 3, 0)  # 02:00Z = 03:00 CET wall


# --------------------------------------------------------------------------------------------
# not_before, lead_time, after
# --------------------------------------------------------------------------------------------


def test_not_before_skips_earlier_slots():
    w = window(**SUNDAYS, not_before=datetime(2026, 6, 20))  # naive: Berlin midnight
    slot = next_slot(w, utc(2026, 6, 1))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 21, 1, 30)
    # a slot starting exactly at not_before is fine
    w = window(**SUNDAYS, not_before=datetime(2026, 6, 14, 1, 30))
    assert local(next_slot(w, utc(2026, 6, 1)), "Europe/Berlin")[0] == datetime(2026, 6, 14, 1, 30)
    # absolute window before not_before: none
    assert next_slot(window(**ABSOLUTE, not_before=datetime(2026, 12, 1)), utc(2026, 11, 1)) is None


def test_not_before_aware():
    w = window(**SUNDAYS, not_before=datetime(2026, 6, 13, 23, 30, tzinfo=UTC))  # = Sun 01:30 CEST
    assert local(next_slot(w, utc(2026, 6, 1)), "Europe/Berlin")[0] == datetime(2026, 6, 14, 1, 30)
    w = window(**SUNDAYS, not_before=datetime(2026, 6, 13, 23, 31, tzinfo=UTC))
    assert local(next_slot(w, utc(2026, 6, 1)), "Europe/Berlin")[0] == datetime(2026, 6, 21, 1, 30)


def test_lead_time_skips_a_too_soon_slot():
    w = window(**SUNDAYS, lead_time="3d")
    # Friday 12:00: Sunday 01:30 is only ~1.5 days away -> the Sunday after
    slot = next_slot(w, datetime(2026, 6, 5, 12, 0, tzinfo=BERLIN))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 14, 1, 30)
    # Wednesday 12:00: 3.5 days ahead -> this Sunday
    slot = next_slot(w, datetime(2026, 6, 3, 12, 0, tzinfo=BERLIN))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 7, 1, 30)
    # exactly lead_time ahead is enough
    slot = next_slot(w, datetime(2026, 6, 4, 1, 30, tzinfo=BERLIN))
    assert local(slot, "Europe/Berlin")[0] == datetime(2026, 6, 7, 1, 30)


def test_lead_time_keeps_an_open_slot():
    w = window(**SUNDAYS, lead_time="7d")
    now = datetime(2026, 6, 7, 2, 0, tzinfo=BERLIN)
    slot = next_slot(w, now)
    assert slot.contains(now)
    # but postponing from it honours lead_time: the next one is exactly 7 days after its start,
    # less than 7 days from now -> the one after
    following = next_slot(w, now, after=slot.start)
    assert local(following, "Europe/Berlin")[0] == datetime(2026, 6, 21, 1, 30)


def test_lead_time_absolute_too_soon_is_none():
    w = window(**ABSOLUTE, lead_time="2d")
    assert next_slot(w, utc(2026, 11, 28)) is None
    assert next_slot(w, utc(2026, 11, 26)) is not None


def test_after_postpones_rrule_and_skips_open():
    w = window(**FIRST_SUNDAY)
    now = datetime(2026, 7, 5, 3, 30, tzinfo=BERLIN)
    assert next_slot(w, now, after=now).start == utc(2026, 8, 2, 1, 0)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def test_describe():
    assert describe(window(**SUNDAYS)) == "Sundays 01:30 Europe/Berlin, 2h"
    assert describe(window(**ABSOLUTE)) == "2026-11-29 01:30 Europe/Berlin, 30m"
    assert describe(window(**FIRST_SUNDAY)) == "RRULE:FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0 Europe/Berlin, 2h"
    assert (
        describe(window(**SUNDAYS, duration="1h30m", not_before=datetime(2026, 5, 1), lead_time="7d"))
        == "Sundays 01:30 Europe/Berlin, 1h30m, not before 2026-05-01 00:00, lead time 7d"
    )
    aware = window(timezone="Europe/Berlin", duration="30m", start=datetime(2026, 11, 29, 0, 30, tzinfo=UTC))
    assert describe(aware) == "2026-11-29 01:30 Europe/Berlin, 30m"


# --------------------------------------------------------------------------------------------
# Property: weekly windows across zones
# --------------------------------------------------------------------------------------------

ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Australia/Sydney", "Asia/Kolkata", "Europe/London"]


def _in_gap(wall: datetime, tz: ZoneInfo) -> bool:
    aware = wall.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall


@settings(max_examples=300, deadline=None)
@given(
    tz_name=st.sampled_from(ZONES),
    weekday=st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45, 59]),
    minutes=st.integers(1, 6 * 60),
    lead_hours=st.sampled_from([0, 0, 1, 36, 24 * 8]),
    now=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_weekly_property(tz_name, weekday, hour, minute, minutes, lead_hours, now):
    tz = ZoneInfo(tz_name)
    hhmm = f"{hour:02d}:{minute:02d}"
    w = window(
        timezone=tz_name,
        duration=minutes * 60,
        lead_time=lead_hours * 3600,
        weekly={"weekday": weekday, "time": hhmm},
    )
    slot = next_slot(w, now)
    assert slot is not None
    assert slot.end > now
    assert slot.end - slot.start == timedelta(minutes=minutes)
    assert slot.contains(now) or slot.start >= now + timedelta(hours=lead_hours)
    start = slot.start.astimezone(tz)
    assert ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][start.weekday()] == weekday
    wall = start.replace(tzinfo=None)
    configured = wall.replace(hour=hour, minute=minute)
    if wall.hour == hour and wall.minute == minute:
        assert start.fold == 0  # of two equal wall times, the first
    else:
        assert _in_gap(configured, tz)  # only on the spring-forward day
        assert slot.start == configured.replace(tzinfo=tz, fold=0).astimezone(UTC)
    # it is the earliest usable one: the occurrence a week before is not usable
    before = (wall - timedelta(weeks=1)).replace(hour=hour, minute=minute)
    prev_start = before.replace(tzinfo=tz, fold=0).astimezone(UTC)
    prev = Slot(prev_start, prev_start + timedelta(minutes=minutes))
    assert prev.end <= now or (not prev.contains(now) and prev.start < now + timedelta(hours=lead_hours))


@settings(max_examples=150, deadline=None)
@given(
    tz_name=st.sampled_from(ZONES),
    weekday=st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 30, 59]),
    lead_hours=st.sampled_from([0, 30]),
    now=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_rrule_weekly_agrees_with_weekly(tz_name, weekday, hour, minute, lead_hours, now):
    common = {"timezone": tz_name, "duration": "90m", "lead_time": lead_hours * 3600}
    weekly = window(**common, weekly={"weekday": weekday, "time": f"{hour:02d}:{minute:02d}"})
    rule = window(**common, rrule=f"FREQ=WEEKLY;BYDAY={weekday[:2].upper()};BYHOUR={hour};BYMINUTE={minute};BYSECOND=0")
    assert next_slot(weekly, now) == next_slot(rule, now)
    first = next_slot(weekly, now)
    assert next_slot(weekly, now, after=first.start) == next_slot(rule, now, after=first.start)
