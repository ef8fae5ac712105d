"""docs/plan-reference.md is exactly what tools/gen_plan_reference.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_plan_reference", ROOT / "tools" / "gen_plan_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "plan-reference.md").read_text(encoding="utf-8")
    assert committed == _generator().render(), "run: .venv/bin/python tools/gen_plan_reference.py"


def test_reference_lists_every_field() -> None:
    text = _generator().render()
    for key in ("`libvirt_uri`", "`proxy_command`", "`twin_name`", "`expect`", "`probe`", "`banner`",
                "`differential`", "`until_bytes`", "`garp_count`", "`rrule`", "`reminder_before`", "`keep_old_for`"):  # fmt: skip
        assert key in text


def test_check_mode(tmp_path: Path) -> None:
    gen = _generator()
    out = tmp_path / "ref.md"
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
