"""`upgrader --help` and the `upgrader status` table import nothing heavy (the start-up budget,
docs/benchmarks.md; measured by bench/overhead.py, not here), and settings are read without
invoke unless a settings file exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import REPO

HEAVY = ("pydantic", "invoke", "transitions", "jinja2", "icalendar", "paramiko", "fabric", "libvirt", "yaml",
         "upgrader.app", "upgrader.engine", "upgrader.plan", "upgrader.record", "upgrader.steps")

PROBE = """
import json, sys
from upgrader.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported(*args: str, home: Path) -> tuple[int, set[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "NO_COLOR": "1"}
    env.pop("UPGRADER_STATE_DIR", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), done.stdout


@pytest.fixture(autouse=True)
def no_system_settings_file() -> None:
    """A /etc/upgrader.* file brings invoke (and its YAML) in, by design: not what is measured here."""
    if any(Path(f"/etc/upgrader.{suffix}").exists() for suffix in ("yaml", "yml", "json", "py")):
        pytest.skip("this machine has a /etc/upgrader.* settings file")


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    code, modules, out = imported("--help", home=tmp_path)
    assert code == 0 and "status" in out
    assert heavy(modules) == [] and "rich" not in modules, heavy(modules)


def test_status_table_imports_nothing_heavy(tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    from upgrader import app
    from upgrader.store import RunStore

    app.start(app.Context(RunStore(state)), app.StartOptions("mailhost", str(fake_plan)))
    code, modules, out = imported("--state-dir", str(state), "status", home=tmp_path)
    assert code == 0 and "mailhost" in out and "completed" in out, out
    assert heavy(modules) == [], heavy(modules)


@pytest.mark.parametrize("with_file", [False, True], ids=["env-only", "settings-file"])
def test_settings_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_file: bool) -> None:
    from upgrader.config import load_settings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("UPGRADER_STATE_DIR", raising=False)
    monkeypatch.delenv("UPGRADER_LOCK_DIR", raising=False)
    if with_file:
        (tmp_path / ".upgrader.yaml").write_text("state_dir: /srv/from-file\nlock_dir: /run/from-file\n")
    settings = load_settings()
    assert str(settings.state_dir) == ("/srv/from-file" if with_file else "state")
    assert str(settings.lock_dir) == ("/run/from-file" if with_file else "/run/lock/upgrader")
    monkeypatch.setenv("UPGRADER_STATE_DIR", "/srv/from-env")  # the environment beats the file
    assert str(load_settings().state_dir) == "/srv/from-env"
    assert str(load_settings("/given").state_dir) == "/given"  # the option beats both
