"""Plan checks that need more than a type: sync paths, lone surrogates, whether a window's
rrule ever fires, and the operator block (webhook URL, who sends, who must not get it). Pure
functions; each refusal is a PlanCheckError carrying the message and the key path below the
validated value it is about, which upgrader.plan reports in its usual
`file:line:col: key.path: message` form.

    normalise_sync_path("/var//mail/./")   # -> "/var/mail/"
    check_sync_paths(["/var/mail/", "/"], allow_dangerous=False)   # PlanCheckError at paths[1].path
    rrule_problem("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "UTC")     # -> "the rule has no occurrence ..."
    check_webhook_url("https://hooks.example.org/upgrader")         # -> the URL, or PlanCheckError
"""

from __future__ import annotations

import json
import re
import unicodedata
import urllib.parse
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from upgrader.windows import first_rrule_wall, rrule_anchor, rrule_rules
from upgrader.window_fit import FORECAST_FACTOR, FORECAST_SLACK, MIN_CUTOVER, SHORTEST_DOWNTIME

__all__ = [
    "MIN_CUTOVER",
    "RRULE_HORIZON",
    "SYSTEM_DIRECTORIES",
    "PlanCheckError",
    "check_env_name",
    "check_operator",
    "check_sync_paths",
    "check_webhook_url",
    "lone_surrogates",
    "normalise_sync_path",
    "printable",
    "rrule_problem",
    "window_problem",
]

KeyPath = tuple[str | int, ...]


class PlanCheckError(ValueError):
    """A plan value refused by a check here. `at`: key path below the value that was checked."""

    def __init__(self, message: str, at: KeyPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


# --------------------------------------------------------------------------------------------
# Sync paths
# --------------------------------------------------------------------------------------------

# Whole system directories (Linux and FreeBSD) and the package databases: rsync --delete of one
# of them from prod onto the upgraded twin undoes the upgrade (and, reversed on rollback, breaks
# the old VM). Data directories below them (/var/mail, /var/spool/postfix, /home/alice) are fine.
SYSTEM_DIRECTORIES: frozenset[str] = frozenset(
    {
        "/", "/bin", "/boot", "/compat", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/libexec", "/media", "/mnt", "/opt", "/proc", "/rescue", "/root", "/run", "/sbin", "/srv", "/sys",
        "/tmp", "/usr", "/var",
        "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/sbin",
        "/usr/share", "/usr/src", "/usr/local", "/usr/local/bin", "/usr/local/etc", "/usr/local/lib",
        "/usr/local/libexec", "/usr/local/sbin", "/usr/local/share",
        "/var/db", "/var/lib", "/var/run", "/var/db/pkg", "/var/lib/apt", "/var/lib/dpkg", "/var/lib/rpm",
    }
)  # fmt: skip

# Besides letters and digits: nothing a shell, rsync's remote-path parsing or a glob gives a meaning.
_PATH_PUNCTUATION = frozenset("/._-+@=,%")
_ALLOW = "set sync.allow_dangerous_paths: true"


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _unsafe_character(path: str) -> str | None:
    """How the first character that is not a letter, a digit or / . _ - + @ = , % reads."""
    for ch in path:
        if not (ch.isalnum() or ch in _PATH_PUNCTUATION):
            return "a space" if ch == " " else f"whitespace (U+{ord(ch):04X})" if ch.isspace() else f'"{ch}"'
    return None


def normalise_sync_path(path: str) -> str:
    """`path` (absolute) with `//` and `.` collapsed and a trailing `/` (or `/.`), meaning "the
    directory's contents", kept. PlanCheckError for a control or format character (line breaks,
    bidi overrides) or a `..` component; no switch allows those."""
    for ch in path:
        if _is_control(ch):
            raise PlanCheckError(f"contains a control or format character (U+{ord(ch):04X}); remove it")
    raw = path.split("/")
    if ".." in raw:
        raise PlanCheckError('contains a ".." component; write the directory it means without ".."')
    parts = [p for p in raw if p not in ("", ".")]
    contents = path.endswith("/") or raw[-1] == "."
    if not parts:
        return "/"
    return "/" + "/".join(parts) + ("/" if contents else "")


def _directory(path: str) -> str:
    return path.rstrip("/") or "/"


def _inside(inner: str, outer: str) -> bool:
    return outer == "/" or inner.startswith(outer + "/")


def check_sync_paths(paths: Sequence[str], *, allow_dangerous: bool) -> None:
    """Refuse, unless `allow_dangerous`: spaces, shell metacharacters and globs (the path reaches
    rsync's remote side, where rsync before 3.2.4 lets the shell on production expand it), whole
    system directories, and one path inside another. Refuse always: the same directory twice.
    Paths are normalised already. The error points at ("paths", i, "path")."""
    seen: list[str] = []
    for i, path in enumerate(paths):
        here = _directory(path)
        at: KeyPath = ("paths", i, "path")
        if (bad := _unsafe_character(path)) is not None and not allow_dangerous:
            raise PlanCheckError(
                f"contains {bad}; a sync path may contain only letters, digits and / . _ - + @ = , % "
                "(rsync before 3.2.4 hands it to the shell on production); if the directory really has "
                f"such a name and production's rsync is 3.2.4 or later, {_ALLOW}",
                at,
            )
        if here in SYSTEM_DIRECTORIES and not allow_dangerous:
            raise PlanCheckError(
                f'"{here}" is a whole system directory: rsync --delete would copy production\'s over the '
                "upgraded twin (and the twin's over the old VM on rollback), undoing the upgrade; list the "
                f"data directories below it (like /var/mail/) instead, or {_ALLOW} if you really mean it",
                at,
            )
        for j, other in enumerate(seen):
            if here == other:
                raise PlanCheckError(f'the same directory as sync.paths[{j}] ("{other}"); list it once', at)
            if not allow_dangerous and (_inside(here, other) or _inside(other, here)):
                outer, inner = (other, here) if _inside(here, other) else (here, other)
                raise PlanCheckError(
                    f'"{here}" and sync.paths[{j}] ("{other}") overlap: "{outer}" already copies "{inner}", '
                    f"so it would be synced twice; keep one of them (use exclude for the parts to leave out), or {_ALLOW}",
                    at,
                )
        seen.append(here)


# --------------------------------------------------------------------------------------------
# Text: lone surrogates
# --------------------------------------------------------------------------------------------


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def lone_surrogates(data: object, path: KeyPath = ()) -> list[tuple[KeyPath, bool]]:
    """Where a surrogate code point (from a YAML escape like "\\ud800") sits in plain YAML data:
    (key path, whether it is in the key itself). Such text is not valid Unicode and fails later,
    wherever it is written as UTF-8 (journal, run.json, a terminal)."""
    found: list[tuple[KeyPath, bool]] = []
    stack: list[tuple[object, KeyPath]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _has_surrogate(value):
                found.append((where, False))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _has_surrogate(key):
                    found.append(((*where, key), True))
                stack.append((item, (*where, key)))
        elif isinstance(value, list):
            stack.extend((item, (*where, i)) for i, item in enumerate(value))
    return sorted(found, key=lambda f: printable(f[0]))


def printable(path: KeyPath) -> KeyPath:
    """A key path safe to print: surrogates in keys shown as \\udXXX escapes."""
    return tuple(p.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(p, str) else p for p in path)


# --------------------------------------------------------------------------------------------
# Windows: does the rrule ever fire?
# --------------------------------------------------------------------------------------------

RRULE_HORIZON = timedelta(days=3653)  # 10 years
_NO_DTSTART_ANCHOR = datetime(2000, 1, 1)  # where windows.py anchors a rule without DTSTART


def _period_set_size(rule: Any) -> int | None:
    """How many occurrences one HOURLY / MINUTELY / SECONDLY period can hold (None: coarser).
    dateutil would scan such a rule period by period up to year 9999 if BYSETPOS picks none."""
    from dateutil.rrule import HOURLY, MINUTELY, SECONDLY

    minutes = len(rule._byminute or (0,))
    seconds = len(rule._bysecond or (0,))
    return {HOURLY: minutes * seconds, MINUTELY: seconds, SECONDLY: 1}.get(rule._freq)


def _static_problem(text: str) -> str | None:
    """What is wrong with the rule whatever the date, checked without iterating it."""
    own_dtstart = rrule_anchor(text, "UTC") is not None
    for rule in rrule_rules(text):
        if rule._byeaster:
            return "BYEASTER is a dateutil extension, not RFC 5545; use BYMONTH/BYMONTHDAY or RDATE lines"
        if rule._count is not None and not own_dtstart:
            return ('COUNT needs a DTSTART line to count from ("DTSTART:20270103T030000\\nRRULE:...COUNT=3"); '
                    "without one it counts from a moving point and never fires")
        size = _period_set_size(rule)
        positions = rule._bysetpos or ()
        if size is not None and positions and all(abs(p) > size for p in positions):
            return f"BYSETPOS picks nothing: each period of this rule holds only {size} occurrence(s)"
    return None


def rrule_problem(text: str, timezone: str, now: datetime | None = None) -> str | None:
    """Why a window's rrule (already parseable) cannot be used, or None.

    Without `now` (every plan load) the check does not depend on the clock: the rule must fire
    within 10 years of its own DTSTART (of 2000-01-01 without one), so BYMONTH=2;BYMONTHDAY=30
    is refused. With `now` (aware; `plan check`, `start`) it must fire within the 10 years from
    now, so a COUNT or UNTIL that has run out is refused too. A plan already in use is never
    loaded with `now`: a rule that runs out during a run must not block its rollback."""
    static = _static_problem(text)
    if static is not None:
        return static
    if now is None:
        anchor = rrule_anchor(text, timezone)
        start = anchor if anchor is not None else _NO_DTSTART_ANCHOR
        where = f"its DTSTART ({start:%Y-%m-%d %H:%M})" if anchor is not None else "2000-01-01 (where a rule without DTSTART begins)"
        why = (f"the rule never fires in the 10 years after {where}: it can never match (like "
               "BYMONTH=2;BYMONTHDAY=30) or its UNTIL comes before its start; fix the rule")
    else:
        start = now.astimezone(ZoneInfo(timezone)).replace(tzinfo=None, microsecond=0)
        why = (f"the rule has no occurrence in the 10 years from now ({start:%Y-%m-%d %H:%M} {timezone}): its COUNT "
               "or UNTIL has run out, or it can never match (like BYMONTH=2;BYMONTHDAY=30); fix or replace the rule")
    try:
        found = first_rrule_wall(text, timezone, start, start + RRULE_HORIZON)
    except ValueError as exc:  # dateutil: e.g. "Invalid combination of interval and byhour ..."
        return f"the rule can never fire: {exc}"
    return why if found is None else None


# --------------------------------------------------------------------------------------------
# The operator block: a webhook URL, who sends, and that no customer gets an operator notice
# --------------------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def check_webhook_url(url: str) -> str:
    """`url` unchanged if it is http:// or https:// with a host and nothing that would put a
    secret into the plan (`user:password@`; the HMAC signature is what authenticates upgrader)
    or break a request line (whitespace, control characters)."""
    if any(ch.isspace() or _is_control(ch) for ch in url):
        raise PlanCheckError("a URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise PlanCheckError(f"not a valid URL ({exc}): {_quoted(url)}") from None
    if parts.scheme not in ("http", "https"):
        raise PlanCheckError(f"must be an http:// or https:// URL, got {_quoted(url)}")
    if not parts.hostname:
        raise PlanCheckError(f"the URL has no host: {_quoted(url)}")
    if "@" in parts.netloc:
        raise PlanCheckError(
            "no user:password@ in the URL: the plan must not hold a secret; the receiver checks the "
            "X-Upgrader-Signature made with secret_env or secret_file"
        )
    return url


def check_env_name(name: str) -> str:
    """An environment variable name (letters, digits, _; not starting with a digit)."""
    if not _ENV_NAME.match(name):
        raise PlanCheckError(f"expected an environment variable name like UPGRADER_WEBHOOK_SECRET, got {_quoted(name)}")
    return name


def check_operator(email: Sequence[str], sender: str | None, webhook: bool, announce_sender: str | None,
                   customers: Sequence[str]) -> None:
    """The operator block as a whole: at least one channel; a From: address for its mail (its
    own `sender`, else the announce block's); and no address that is also a customer's
    (`announce.to`): operator notices carry error output, which customers never get. Errors point
    below `operator`."""
    if not email and not webhook:
        raise PlanCheckError('an operator block needs "email", "webhook" or both')
    if email and sender is None and announce_sender is None:
        raise PlanCheckError(
            'operator mail needs a From: address: add "sender" here (or an announce block, whose sender is used)',
            ("sender",),
        )
    told = {c.casefold() for c in customers}
    for i, address in enumerate(email):
        if address.casefold() in told:
            raise PlanCheckError(
                f"{address} is also in announce.to: operator notices carry error output and commands, which "
                "customers never get; use an address of the operators only",
                ("email", i),
            )


# --------------------------------------------------------------------------------------------
# Windows: is there one left from now on, long enough for a cutover?
# --------------------------------------------------------------------------------------------

# A window shorter than MIN_CUTOVER (window_fit.py: what await_window asks for the shortest
# downtime a cutover has) can never take a cutover.


def window_problem(window: Any, now: datetime) -> tuple[str, str] | None:
    """(key below `window`, what is wrong) if the window (a plan.Window) has no usable slot seen
    from `now` (a start in the past, a not_before or lead_time that leaves none, an exhausted
    rule) or is shorter than a cutover needs; None if it is fine. `plan check`, the dry run,
    `start` and `upgrader preflight` use it; a run under way never does (its window is journaled)."""
    from upgrader.durations import format_duration
    from upgrader.windows import next_slot

    if window.duration < MIN_CUTOVER:
        return "duration", (f"a window of {window.duration.total_seconds():g} s cannot take a cutover: it needs at least "
                            f"{MIN_CUTOVER.total_seconds():g} s (quiesce, final sync, takeover, services started: "
                            f"{SHORTEST_DOWNTIME.total_seconds():g} s at the least, x{FORECAST_FACTOR:g} + "
                            f"{FORECAST_SLACK.total_seconds():g} s of slack)")
    if window.rrule is not None or next_slot(window, now) is not None:
        return None  # a rule's occurrences: rrule_problem (10 years; next_slot looks 2 years ahead)
    key = "start" if window.start is not None else "weekly" if window.weekly is not None else "rrule"
    why = "the window has no occurrence from now on"
    if window.start is not None:
        why = f"the window ({window.start.isoformat()} {window.timezone}, {format_duration(window.duration)}) is in the past"
    if window.lead_time:
        why += f" or starts sooner than lead_time ({format_duration(window.lead_time)}) from now"
    if window.not_before is not None:
        why += f" (not_before {window.not_before.isoformat()})"
    return key, why + "; a run would park forever after the upgrade: set a window that is still to come"
