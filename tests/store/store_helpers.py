"""Helpers for the store tests (a uniquely named module, importable because pytest puts this dir on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start a child python that can import upgrader (from this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", code, *args], env=env, text=True, **kwargs
    )
