"""A small, fast subset of tools/fuzz_plans.py for CI: ~300 generated hostile plan files through
parse_plan (and a few through `upgrader plan check`). The full run is
`.venv/bin/python tools/fuzz_plans.py --cases 10000` (see docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from upgrader.errors import PlanError
from upgrader.plan import parse_plan

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_plans.py"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_plans", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_plans", module)
    spec.loader.exec_module(module)
    return module


fuzz_plans = _tool()

# Inputs the fuzzer once crashed parse_plan with (PyYAML's scalar constructors raised
# ValueError/OverflowError, pydantic's errors() a UnicodeEncodeError on a lone surrogate, and
# `upgrader plan check` exited 70). Fixed; each stays as a regression test below.
FOUND_BY_FUZZING = {
    "invalid YAML timestamp (2024-13-45)": (b"version: 2024-13-45\n", r"ValueError: (month|day|hour|minute|second|offset)"),
    "invalid timestamp as a key": (b"2024-02-30: 1\n", r"ValueError: (month|day|hour|minute|second|offset)"),
    "timestamp with a bad offset": (b"version: 2024-06-01T03:00:00+99:00\n", r"ValueError: (month|day|hour|minute|second|offset)"),
    "int over 4300 digits": (b"version: " + b"1" * 4301 + b"\n", r"ValueError: Exceeds the limit"),
    "hex int over 4300 digits": (b"version: 0x" + b"f" * 5000 + b"\n", r"ValueError: Exceeds the limit"),
    "duration too large for timedelta": (
        b"keep_old_for: 99999999999999999999999999999\n", r"OverflowError"),
    "!!int tag on a non-number": (b"version: !!int 12 x\n", r"ValueError: invalid literal for int"),
    "!!float tag on a non-number": (b"version: !!float x\n", r"ValueError: could not convert string to float"),
    # a lone surrogate from a YAML escape in a value pydantic rejects: ValidationError.errors() fails
    "lone surrogate escape in a bad value": (b'version: "\\uD800"\n', r"UnicodeEncodeError: 'utf-8' codec can't encode"),
}


def test_fuzz_subset_only_plan_errors() -> None:
    summary = fuzz_plans.fuzz(300, seed=20261124, cli_runs=3, hypothesis_share=0.1)
    assert summary.cases == 300
    assert summary.valid + summary.plan_errors + len(
        [f for f in summary.failures if not f.family.endswith("/cli")]) == 300
    assert not summary.failures, "\n\n".join(
        f"[{f.family}] {f.error}\nparse_plan({f.data[:500]!r}, 'fuzz.yml')" for f in summary.failures)
    assert summary.valid > 0 and summary.plan_errors > 0  # the generator makes both kinds


def test_fuzz_is_reproducible() -> None:
    a = fuzz_plans.fuzz(40, seed=7, cli_runs=0, hypothesis_share=0)
    b = fuzz_plans.fuzz(40, seed=7, cli_runs=0, hypothesis_share=0)
    assert (a.valid, a.plan_errors, len(a.failures)) == (b.valid, b.plan_errors, len(b.failures))


@pytest.mark.parametrize("name", list(FOUND_BY_FUZZING))
def test_found_by_fuzzing_is_a_plan_error(name: str) -> None:
    data, _ = FOUND_BY_FUZZING[name]
    with pytest.raises(PlanError) as info:
        parse_plan(data, "fuzz.yml")
    assert all(fuzz_plans.PROBLEM_RE.match(p) for p in info.value.problems), info.value.problems
