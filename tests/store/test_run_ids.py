"""Run ids sort in the order the runs were made: the store takes a host's last id in sorted order
as its current run, so a second run started in the same second (or under a frozen or stepped-back
clock) must still sort after the first (before: the second and a random suffix, so the older,
finished run could come last and `resume` said "no unfinished run")."""

from __future__ import annotations

import datetime as dt

from upgrader.record import new_run_id
from upgrader.store.runstore import _RUN_ID_RE

T0 = dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)


def test_ids_made_in_one_second_sort_by_their_microseconds() -> None:
    ids = [new_run_id(T0 + dt.timedelta(microseconds=n * 997)) for n in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(_RUN_ID_RE.match(i) for i in ids)


def test_a_frozen_or_stepped_back_clock_still_sorts_after_the_latest() -> None:
    latest = new_run_id(T0)
    for moment in (T0, T0, T0 - dt.timedelta(hours=1)):
        following = new_run_id(moment, after=latest)
        assert following > latest and _RUN_ID_RE.match(following)
        latest = following


def test_a_clock_that_moved_on_gives_a_plain_id() -> None:
    later = T0 + dt.timedelta(seconds=5)
    assert new_run_id(later, after=new_run_id(T0)).startswith("20261127T100005Z-")
