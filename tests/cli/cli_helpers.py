"""Helpers for the CLI tests (a uniquely named module, importable because pytest puts this dir on sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """main() in-process: (exit code, stdout + stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out + out.err
