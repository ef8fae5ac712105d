from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
from pathlib import Path

import pytest

from upgrader.errors import StateCorrupt
from upgrader.phases import Phase
from upgrader.store import RunStore

RUN = "20261124T201500Z-3f9a"


def jpath(store: RunStore) -> Path:
    return store.run_dir("mailhost", RUN) / "journal.jsonl"


def test_append_and_read(store: RunStore) -> None:
    assert store.journal("mailhost", RUN) == []
    store.append("mailhost", RUN, {"event": "begin", "step": "snapshot", "phase": Phase.SNAPSHOT})
    store.append("mailhost", RUN, {"event": "done", "step": "snapshot", "outputs": {"b": 1, "a": [1, 2]}, "ts": "fixed"})
    entries = store.journal("mailhost", RUN)
    assert entries[0]["event"] == "begin" and entries[0]["phase"] == "snapshot"
    ts = dt.datetime.fromisoformat(entries[0]["ts"])
    assert ts.tzinfo is not None and ts.utcoffset() == dt.timedelta(0)
    assert entries[1] == {"event": "done", "step": "snapshot", "outputs": {"b": 1, "a": [1, 2]}, "ts": "fixed"}
    lines = jpath(store).read_text().splitlines()
    assert lines[1] == '{"event":"done","outputs":{"a":[1,2],"b":1},"step":"snapshot","ts":"fixed"}'


def test_append_does_not_mutate_entry(store: RunStore) -> None:
    entry = {"event": "begin"}
    store.append("mailhost", RUN, entry)
    assert entry == {"event": "begin"}


def test_newlines_in_values_stay_on_one_line(store: RunStore) -> None:
    store.append("mailhost", RUN, {"out": "line1\nline2"})
    assert len(jpath(store).read_bytes().splitlines()) == 1
    assert store.journal("mailhost", RUN)[0]["out"] == "line1\nline2"


@pytest.mark.parametrize("tail", [b'{"event":"do', b'{"event":"done"}', b"\x00\x00\x00", b"garbage\n", b"\xff\xfe\n"])
def test_torn_last_line_ignored(store: RunStore, tail: bytes) -> None:
    store.append("mailhost", RUN, {"event": "begin", "step": "clone"})
    with jpath(store).open("ab") as f:
        f.write(tail)
    assert [e["event"] for e in store.journal("mailhost", RUN)] == ["begin"]
    # the next append cuts the torn tail off, so it never becomes a bad line in the middle
    store.append("mailhost", RUN, {"event": "done", "step": "clone"})
    assert [e["event"] for e in store.journal("mailhost", RUN)] == ["begin", "done"]


def test_torn_only_line(store: RunStore) -> None:
    jpath(store).parent.mkdir(parents=True)
    jpath(store).write_bytes(b'{"ev')
    assert store.journal("mailhost", RUN) == []
    store.append("mailhost", RUN, {"event": "x"})
    assert [e["event"] for e in store.journal("mailhost", RUN)] == ["x"]


def test_corrupt_middle_line(store: RunStore) -> None:
    for i in range(3):
        store.append("mailhost", RUN, {"n": i})
    lines = jpath(store).read_bytes().splitlines(keepends=True)
    lines[1] = b"{oops\n"
    jpath(store).write_bytes(b"".join(lines))
    with pytest.raises(StateCorrupt) as info:
        store.journal("mailhost", RUN)
    assert f"{jpath(store)}:2:" in info.value.message
    assert info.value.exit_code == 4
    assert info.value.hint and "line 2" in info.value.hint


def test_non_object_middle_line_is_corrupt(store: RunStore) -> None:
    jpath(store).parent.mkdir(parents=True)
    jpath(store).write_text('{"n":1}\n[1,2]\n{"n":3}\n')
    with pytest.raises(StateCorrupt, match=":2:"):
        store.journal("mailhost", RUN)


def test_bad_complete_line_before_torn_tail_is_corrupt(store: RunStore) -> None:
    jpath(store).parent.mkdir(parents=True)
    jpath(store).write_bytes(b'{"n":1}\nbad\n{"n":')
    with pytest.raises(StateCorrupt, match=":2:"):
        store.journal("mailhost", RUN)


def test_long_journal_tail_cut(store: RunStore) -> None:
    store.append("mailhost", RUN, {"n": 1})
    with jpath(store).open("ab") as f:
        f.write(b'{"big":"' + b"x" * 50000)
    store.append("mailhost", RUN, {"n": 2})
    assert [json.loads(line)["n"] for line in jpath(store).read_text().splitlines()] == [1, 2]


def test_append_waits_for_another_writers_half_written_line(store: RunStore) -> None:
    """`upgrader ssh` appends beside the engine without the host lock: an append that finds
    another writer's line half-written (that writer holds the journal's flock) waits for it,
    instead of cutting it off as a torn tail."""
    store.append("mailhost", RUN, {"kind": "begin", "key": "snapshot"})
    fd = os.open(jpath(store), os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b'{"key":"snapshot","kind":')  # the engine, mid-line
        appender = threading.Thread(target=store.append, args=("mailhost", RUN, {"kind": "ssh", "by": "alice"}))
        appender.start()
        appender.join(0.3)
        assert appender.is_alive()  # waiting for the lock, the half line untouched
        os.write(fd, b'"done"}\n')
    finally:
        os.close(fd)  # releases the flock
    appender.join(10)
    kinds = [(e["kind"], e.get("key")) for e in store.journal("mailhost", RUN)]
    assert kinds == [("begin", "snapshot"), ("done", "snapshot"), ("ssh", None)]
