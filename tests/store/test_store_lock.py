from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from upgrader.errors import LockedError
from upgrader.store import RunStore

from store_helpers import python

HOLDER = """
import sys
from pathlib import Path
from upgrader.store import RunStore

with RunStore(Path(sys.argv[1])).lock("mailhost"):
    print("locked", flush=True)
    sys.stdin.read()  # hold until stdin closes (or we are killed)
print("released", flush=True)
"""

CONTENDER = """
import sys
from pathlib import Path
from upgrader.errors import LockedError
from upgrader.store import RunStore

try:
    RunStore(Path(sys.argv[1])).lock("mailhost").acquire()
except LockedError as e:
    print("LOCKED", e.exit_code, e.message)
else:
    print("ACQUIRED")
"""


def start_holder(store: RunStore) -> subprocess.Popen[str]:
    holder = python(HOLDER, str(store.root), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def contend(store: RunStore) -> str:
    child = python(CONTENDER, str(store.root), stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    return out.strip()


def test_second_process_is_refused_naming_holder_until_holder_dies(store: RunStore) -> None:
    holder = start_holder(store)
    try:
        out = contend(store)
        assert out.startswith(f'LOCKED 3 host "mailhost" is locked by pid {holder.pid} on ')
        assert " since 20" in out

        with pytest.raises(LockedError) as info:
            store.lock("mailhost").acquire()
        assert f"pid {holder.pid}" in info.value.message
        assert info.value.hint and "holder runs:" in info.value.hint
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL

    assert contend(store) == "ACQUIRED"
    with store.lock("mailhost") as lock:
        assert lock.held
        info = json.loads((store.root / "mailhost" / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["hostname"] and info["since"] and isinstance(info["argv"], list)
    assert not lock.held


def test_clean_release_by_other_process(store: RunStore) -> None:
    holder = start_holder(store)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=30)
    assert contend(store) == "ACQUIRED"


def test_in_process_acquire_release(store: RunStore) -> None:
    lock = store.lock("mailhost")
    lock.acquire()
    try:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            store.lock("mailhost").acquire()  # a second open file description conflicts too
        assert store.lock("db1").acquire() is None  # other hosts are independent
        with pytest.raises(RuntimeError):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # idempotent
    with store.lock("mailhost"):
        pass


def test_lock_held_without_holder_info(store: RunStore) -> None:
    import fcntl

    path = store.root / "mailhost" / ".lock"
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError, match="another process"):
            store.lock("mailhost").acquire()
    finally:
        os.close(fd)


def test_lock_released_on_exception(store: RunStore) -> None:
    with pytest.raises(ValueError):
        with store.lock("mailhost"):
            raise ValueError("boom")
    assert contend(store) == "ACQUIRED"
