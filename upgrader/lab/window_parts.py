"""The parts of a cutover window, from a run's journal (the `ts` of each step's begin/done), for
the cutover bench: where the time between the quiesce and "the service answers" went.

Each part runs from the previous step's `done` to this step's `done`; the first from the
quiesce's `begin` (where cutover.service_back's downtime starts). Steps a run did not take
(claim_address under mac_move; sync_close in a run from before the sync session) are left out.
`sync_close` is the revoke of the sync key on prod after the final pass (one command). `total` is quiesce begin -> service_back done; with a
client hold (issue 14) `held` is hold_clients done -> service_back done.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from upgrader.store.journal import parse_journal

WINDOW = ("cutover.quiesce", "cutover.final_sync", "cutover.sync_close", "cutover.takeover", "cutover.claim_address",
          "cutover.resume", "cutover.service_back")
HOLD = "cutover.hold_clients"


def _times(entries: list[dict[str, Any]], kind: str) -> dict[str, dt.datetime]:
    """key -> ts of its last `kind` entry (a resumed run's redo wins)."""
    return {str(e["key"]): dt.datetime.fromisoformat(str(e["ts"])) for e in entries if e.get("kind") == kind and "key" in e}


def window_parts(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per part, named after the step without `cutover.`; {} when the window is not complete."""
    begun, done = _times(entries, "begin"), _times(entries, "done")
    start = begun.get(WINDOW[0])
    if start is None or WINDOW[-1] not in done:
        return {}
    parts: dict[str, float] = {}
    previous = start
    for key in WINDOW:
        if key in done:
            parts[key.removeprefix("cutover.")] = round((done[key] - previous).total_seconds(), 3)
            previous = done[key]
    parts["total"] = round((done[WINDOW[-1]] - start).total_seconds(), 3)
    if HOLD in done:
        parts["held"] = round((done[WINDOW[-1]] - done[HOLD]).total_seconds(), 3)
    return parts


def journal_window_parts(path: Path) -> dict[str, float]:
    """window_parts of a journal.jsonl on disk."""
    return window_parts(parse_journal(path, path.read_bytes()))
