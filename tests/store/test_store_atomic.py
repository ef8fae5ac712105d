from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from upgrader.errors import StateUnwritable
from upgrader.record import RunRecord
from upgrader.store import RunStore

from store_helpers import python

CRASHING_SAVE = """
import os, signal, sys
from pathlib import Path
from upgrader.store import RunStore

store = RunStore(Path(sys.argv[1]))
rec = store.load(sys.argv[2], sys.argv[3])
rec.plan_path = "NEW"
rec.outputs["snapshot"] = {"name": "x" * 100000}
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
store.save(rec)
print("survived")
"""


def test_crash_between_temp_write_and_replace(
    store: RunStore, make_record: Callable[..., RunRecord]
) -> None:
    rec = make_record()
    store.create(rec)
    store.save(rec)
    run_dir = store.run_dir("mailhost", rec.run_id)
    child = python(CRASHING_SAVE, str(store.root), "mailhost", rec.run_id, stdout=-1)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert "survived" not in out

    leftovers = [p for p in run_dir.iterdir() if p.name not in ("run.json", "journal.jsonl")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".run.json.")
    assert leftovers[0].stat().st_size > 100000  # the temp was fully written, then the process died

    assert store.load("mailhost", rec.run_id) == rec  # the old record, intact
    assert store.runs("mailhost") == [rec.run_id]
    assert store.hosts() == ["mailhost"]

    rec.plan_path = "after-crash"
    store.save(rec)  # a later save works despite the leftover
    assert store.load("mailhost", rec.run_id).plan_path == "after-crash"


def test_failed_replace_removes_temp(
    store: RunStore, make_record: Callable[..., RunRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = make_record()
    store.create(rec)

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    rec.plan_path = "NEW"
    with pytest.raises(StateUnwritable, match="No space left on device"):
        store.save(rec)
    monkeypatch.undo()
    run_dir: Path = store.run_dir("mailhost", rec.run_id)
    assert sorted(p.name for p in run_dir.iterdir()) == ["journal.jsonl", "run.json"]
    assert store.load("mailhost", rec.run_id).plan_path == "plans/mailhost.yaml"
