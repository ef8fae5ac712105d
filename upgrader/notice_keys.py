"""Journal keys of the customer notices and what they say about the customers: were they told
of the window the run waits for? Pure functions over a run's outputs (the journal's done index
or run.json's outputs), used by the window step and by `status`.

A notice is a `once` under its key (`notice.announce`, `notice.postponed[2]`, ...). A send that
failed after its retries is journaled `sent: false`; the next call of the step tries again
under the next attempt key (`notice.announce.retry[1]`, `.retry[2]`, ...), so a sent notice is
still sent once per run and one that may have gone out before a crash (`sent: "unknown"`) is
never repeated."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

ANNOUNCE_KEY = "notice.announce"
_WINDOW = re.compile(r"window\[(\d+)\]\Z")


def postponed_key(sequence: int) -> str:
    return f"notice.postponed[{sequence}]"


def attempt_key(key: str, attempt: int) -> str:
    """The key of a notice's `attempt`-th try (0: the first, the notice's own key)."""
    return key if attempt == 0 else f"{key}.retry[{attempt}]"


def last_attempt(keys: Iterable[str], key: str) -> int | None:
    """The number of the last attempt of notice `key` among `keys` (begun or done), None if none."""
    known = set(keys)
    n = None
    while attempt_key(key, 0 if n is None else n + 1) in known:
        n = 0 if n is None else n + 1
    return n


def sent_state(outputs: Mapping[str, Mapping[str, Any]], key: str) -> Any:
    """`True`, `False` or `"unknown"` for the last finished attempt of notice `key`; None if it
    was never tried."""
    n = last_attempt(outputs, key)
    return None if n is None else outputs[attempt_key(key, n)].get("sent")


def current_window(outputs: Mapping[str, Mapping[str, Any]]) -> int | None:
    """N of the window the run waits for (`window[N]`, the highest), None before one is fixed."""
    found = [int(m.group(1)) for k, v in outputs.items() if (m := _WINDOW.match(k)) and v.get("start")]
    return max(found) if found else None


def customers_told(outputs: Mapping[str, Mapping[str, Any]], sequence: int) -> bool:
    """Were the customers told of window `sequence`: the announcement went out (or may have, before
    a crash), and for a later window (a postponement) the announcement named it or its
    `postponed` notice went out."""
    announce = sent_state(outputs, ANNOUNCE_KEY)
    if announce in (None, False):
        return False
    n = last_attempt(outputs, ANNOUNCE_KEY)
    assert n is not None
    if sequence == 0 or announce == "unknown" or outputs[attempt_key(ANNOUNCE_KEY, n)].get("sequence") == sequence:
        return True
    return sent_state(outputs, postponed_key(sequence)) not in (None, False)


def customers_not_told(outputs: Mapping[str, Mapping[str, Any]]) -> bool:
    """For `status`: the run announces (it tried to) and the customers do not know of the window
    it waits for (or cut over in)."""
    sequence = current_window(outputs)
    if sequence is None or sent_state(outputs, ANNOUNCE_KEY) is None:
        return False
    return not customers_told(outputs, sequence)
