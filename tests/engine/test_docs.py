"""Generated docs stay in step with the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_state_diagram_current() -> None:
    done = subprocess.run([sys.executable, str(REPO / "tools/gen_state_diagram.py"), "--check"], timeout=60)
    assert done.returncode == 0, "docs/state-machine.md is stale: run python tools/gen_state_diagram.py"


def test_exit_codes_documented() -> None:
    from upgrader import errors

    cli_doc = (REPO / "docs/cli.md").read_text()
    codes = {cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.UpgraderError)}
    for code in codes | {0, 70, 130}:
        assert f"| {code} " in cli_doc, f"exit code {code} is not in docs/cli.md"
