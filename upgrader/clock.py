"""The time, in UTC. A module of its own so that reading the state (`upgrader status`) does not
import pydantic through upgrader.record just for this."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
