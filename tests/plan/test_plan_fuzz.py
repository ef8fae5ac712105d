"""Random mutations of the shipped freebsd7 plan never escape as anything but PlanError, and
every problem line keeps the `file:line:col: ` form."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from upgrader.errors import PlanError
from upgrader.plan import Plan, parse_plan
from upgrader.testing.plan_mutations import mutate, paths

PLAN_FILE = Path(__file__).resolve().parents[2] / "playbooks" / "freebsd7.yml"
PLAN_TEXT = PLAN_FILE.read_text()
PLAN_DATA = yaml.safe_load(PLAN_TEXT)
PROBLEM_RE = re.compile(r"^f\.yml:\d+:\d+: \S")

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["yes please", "1h", "99999", "/abs", "qemu:///system", "[", "{", "ip_move", "*a", "<<"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


ALL_PATHS = paths(PLAN_DATA)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(
            st.sampled_from(ALL_PATHS),
            st.sampled_from(["drop", "replace", "swap_type", "insert"]),
            junk,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_data_mutations_raise_only_plan_error(mutations: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(PLAN_DATA)
    for path, op, value in mutations:
        try:
            data = mutate(data, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    _check(text)


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(PLAN_TEXT)),
            st.integers(min_value=0, max_value=8),
            st.text(alphabet=st.sampled_from(list(" \t\n:-[]{}&*!|>'\"#%@`,?yes0123abc\x00\x85\ufeff\u2028")), max_size=6),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_text_mutations_raise_only_plan_error(edits: list[tuple[int, int, str]]) -> None:
    text = PLAN_TEXT
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut :]
    _check(text)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=64), at=st.integers(min_value=0, max_value=len(PLAN_TEXT)))
def test_byte_mutations_raise_only_plan_error(raw: bytes, at: int) -> None:
    data = PLAN_TEXT.encode()
    _check(data[:at] + raw + data[at:])


def _check(text: str | bytes) -> None:
    try:
        plan = parse_plan(text, "f.yml")
    except PlanError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert PROBLEM_RE.match(problem), problem
    else:
        assert isinstance(plan, Plan)
