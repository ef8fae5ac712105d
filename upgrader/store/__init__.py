"""Run state on disk (see runstore.py for the layout, files.py for the safety rules)."""

from upgrader.store.files import DIR_MODE, FILE_MODE, check_dir, secure_open, touch_private, writing
from upgrader.store.lock import HostLock
from upgrader.store.runstore import JOURNAL_FILE, LOCK_FILE, RUN_FILE, RunStore

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "JOURNAL_FILE",
    "LOCK_FILE",
    "RUN_FILE",
    "HostLock",
    "RunStore",
    "check_dir",
    "secure_open",
    "touch_private",
    "writing",
]
