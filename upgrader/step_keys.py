"""Journal keys that other modules read, in one place: the upgrade steps (`upgrade[N]`), the
twin checkpoints taken before them (`checkpoint.upgrade[N]`), the pre-sync passes
(`presync.pass[N]`, numbered on across the refreshes when a window opens) and what a held run may
skip. Pure functions; no other module parses these strings."""

from __future__ import annotations

import re
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


_UPGRADE = re.compile(r"upgrade\[(\d+)\]\Z")
_PRESYNC_PASS = re.compile(r"presync\.pass\[(\d+)\]\Z")
CHECKPOINT_PREFIX = "checkpoint."
MERGE_KEY = "checkpoints.merge"  # the checkpoints folded back: no revert after it
VALIDATE_KEY = "validate_staging"
PRESYNC_PREFIX = "presync."


def upgrade_key(index: int) -> str:
    return f"upgrade[{index}]"


def upgrade_index(key: str | None) -> int | None:
    """N for "upgrade[N]", None for any other key."""
    found = _UPGRADE.match(key or "")
    return int(found.group(1)) if found else None


def presync_pass_key(number: int) -> str:
    return f"presync.pass[{number}]"


def presync_pass_number(key: str | None) -> int | None:
    """N for "presync.pass[N]", None for any other key."""
    found = _PRESYNC_PASS.match(key or "")
    return int(found.group(1)) if found else None


def presync_passes(outputs: Mapping[str, T]) -> list[tuple[int, T]]:
    """The pre-sync passes among `outputs` (a journal's done index, a record's outputs), as
    (N, outputs) in pass order: by number, so pass 10 comes after pass 9."""
    found = ((presync_pass_number(key), value) for key, value in outputs.items())
    return sorted(((n, value) for n, value in found if n is not None), key=lambda pair: pair[0])


def checkpoint_key(step: str) -> str:
    """The journal key of the checkpoint taken before `step` ("upgrade[3]")."""
    return CHECKPOINT_PREFIX + step


def revert_targets(done: Iterable[str]) -> list[str]:
    """The steps `revert --to` can go back to: those a checkpoint was taken before."""
    return [key[len(CHECKPOINT_PREFIX):] for key in done if key.startswith(CHECKPOINT_PREFIX)]


def skippable(step: str | None) -> bool:
    """A step whose effect the operator can stand in for by hand: an upgrade command or the
    validation. Not the clone (later steps need the twin it defines), not a pre-sync pass (its
    figures are the downtime forecast) - retry those."""
    return upgrade_index(step) is not None or step == VALIDATE_KEY


def run_again_after(to: str, keys: Iterable[str]) -> list[str]:
    """What a revert to upgrade[N] forgets: upgrade[N..], the checkpoints after N, the
    validation and the pre-sync (all of it is fed by the upgrade's result)."""
    n = upgrade_index(to)
    assert n is not None
    out = []
    for key in set(keys):
        if key.startswith(CHECKPOINT_PREFIX):
            m = upgrade_index(key[len(CHECKPOINT_PREFIX):])
            if m is not None and m > n:
                out.append(key)
            continue
        m = upgrade_index(key)
        if (m is not None and m >= n) or key == VALIDATE_KEY or key.startswith(PRESYNC_PREFIX):
            out.append(key)
    return sorted(out)
