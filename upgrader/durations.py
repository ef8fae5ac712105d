"""Human durations ("90s", "1h30m", "7d") and byte sizes ("16MiB", "500k") as used in plan files.

Both accept a plain non-negative integer too (seconds, bytes). Parsing is strict: anything we do
not recognise raises ValueError with the text that was given; callers turn that into a plan error.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(?:(\d+)\s*([smhdw]))", re.ASCII)
_DURATION_FULL_RE = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$", re.ASCII)

DURATION_PATTERN = r"^\s*(?:\d+\s*[smhdw]\s*)+$"
DURATION_HELP = 'expected a duration like "30s", "15m", "2h", "7d"'


def parse_duration(value: object) -> timedelta:
    """`90` (seconds), "90s", "15m", "2h", "7d", "1w", "1h30m" -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):  # bool is an int subclass; `timeout: yes` is a mistake
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return _seconds(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().lower()
    if text.isdigit():
        return _seconds(int(text))
    if not _DURATION_FULL_RE.match(text):
        raise ValueError(value)
    total = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(text))
    return _seconds(total)


def _seconds(total: int) -> timedelta:
    try:
        return timedelta(seconds=total)
    except OverflowError:  # more than ~2.7 million years
        raise ValueError(total) from None


def format_duration(delta: timedelta) -> str:
    """The shortest plan spelling of a duration: 90 s -> "1m30s", 7 days -> "7d", 0 -> "0s"."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.ASCII)

BYTESIZE_PATTERN = r"^\s*\d+(?:\.\d+)?\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\s*$"
BYTESIZE_HELP = 'expected a size like "500k", "16MiB", "1GiB" or a number of bytes'


def parse_bytesize(value: object) -> int:
    """`4096`, "500k" (KiB), "16MiB", "1GiB", "10MB" (decimal) -> bytes."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    m = _SIZE_RE.match(value.lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(value)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
