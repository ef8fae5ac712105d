"""`status --json` and `list --json` (issue 12, point 9): one versioned document with a stable
`state` per run, pinned here key by key (docs/json-schema.md is its description; `jsonschema` is
not a dependency, so the key sets and types are checked directly). `list` in a pipe never cuts a
run id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run

from upgrader.app_status import RunState
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS

SCHEMA = "upgrader.status/1"
RUN_KEYS = {"host": str, "run_id": str, "state": str, "phase": str, "finished": bool, "created": str, "updated": str,
            "hint": (str, type(None)), "parked": (str, type(None)), "held": (dict, type(None)),
            "error": (dict, type(None)), "cleanup_error": (dict, type(None)), "holder": (dict, type(None)),
            "warnings": list, "customers_not_told": bool, "client_hold": (str, type(None)), "plan": dict, "vm": (dict, type(None)), "options": dict, "timings": list, "outputs": dict}
HOLDER_KEYS = {"pid", "hostname", "since", "command", "alive"}
TIMING_KEYS = {"phase", "status", "started", "ended", "seconds"}
ERROR_KEYS = {"phase", "message", "hint", "kind"}
HELD_KEYS = {"phase", "step", "title", "message", "hint", "error_kind", "command", "rc", "tail", "since"}
STATES = {"active", "parked", "held", "interrupted", "urgent", "error", "finished"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "json-schema.md"


def check(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert set(document) == {"schema", "runs"} and document["schema"] == SCHEMA
    for entry in document["runs"]:
        assert set(entry) == set(RUN_KEYS), set(entry) ^ set(RUN_KEYS)
        for key, kind in RUN_KEYS.items():
            assert isinstance(entry[key], kind), (key, entry[key])
        assert entry["state"] in STATES
        assert set(entry["plan"]) == {"path", "sha256"}
        assert entry["holder"] is None or set(entry["holder"]) == HOLDER_KEYS
        for timing in entry["timings"]:
            assert set(timing) == TIMING_KEYS
        for key in ("error", "cleanup_error"):
            assert entry[key] is None or set(entry[key]) == ERROR_KEYS
        assert entry["held"] is None or set(entry["held"]) == HELD_KEYS
    return list(document["runs"])


def test_the_states_are_the_documented_ones() -> None:
    assert {s.value for s in RunState} == STATES
    text = DOCS.read_text()
    assert SCHEMA in text
    for key in [*RUN_KEYS, *STATES]:
        assert f"`{key}`" in text, f"docs/json-schema.md does not describe `{key}`"


def test_status_and_list_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = str(tmp_path / "state")
    assert run(capsys, "--state-dir", state, "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    code, out = run(capsys, "--state-dir", state, "status", "--json")
    [entry] = check(json.loads(out))
    assert entry["state"] == "parked" and entry["phase"] == "completed" and entry["parked"].startswith("old VM")
    assert entry["run_id"] == RunStore(tmp_path / "state").runs("mailhost")[-1] and entry["holder"] is None
    assert entry["timings"][0]["phase"] == "preflight" and entry["timings"][0]["status"] == "done"
    assert run(capsys, "--state-dir", state, "decommission", "mailhost", "--yes")[0] == 0
    code, out = run(capsys, "--state-dir", state, "status", "mailhost", "--json")
    [entry] = check(json.loads(out))
    assert code == 0 and entry["state"] == "finished" and entry["phase"] == "decommissioned"
    world = new_world(production_network="prod-net")
    world["commands"] = list(RELEASE_COMMANDS)
    WorldFile(tmp_path / "other.json").write(world)
    other = tmp_path / "other.yml"
    other.write_text(FAKE_PLAN.format(world=tmp_path / "other.json", keep="1h"))
    assert run(capsys, "--state-dir", state, "start", "otherhost", "--plan", str(other))[0] == 0
    code, out = run(capsys, "--state-dir", state, "list", "--json")
    runs = check(json.loads(out))
    assert [(r["host"], r["state"]) for r in runs] == [("mailhost", "finished"), ("otherhost", "parked")]


def test_held_run_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world, fake_plan: Path) -> None:  # type: ignore[no-untyped-def]
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
    state = str(tmp_path / "state")
    assert run(capsys, "--state-dir", state, "start", "mailhost", "--plan", str(fake_plan))[0] == 6
    code, out = run(capsys, "--state-dir", state, "status", "--json")
    [entry] = check(json.loads(out))
    assert entry["state"] == "held" and entry["held"]["phase"] == "validate_staging" and entry["error"]["phase"] == "validate_staging"


def test_list_in_a_pipe_never_cuts_a_run_id(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow pipe: the old table cut the run id to "2026…"
    state = str(tmp_path / "state")
    host = "a-rather-long-host-name.example.org"
    assert run(capsys, "--state-dir", state, "start", host, "--plan", str(fake_plan))[0] == 0
    code, out = run(capsys, "--state-dir", state, "list", "--json")
    [entry] = check(json.loads(out))
    code, out = run(capsys, "--state-dir", state, "list")
    assert code == 0
    [row] = [line for line in out.splitlines() if entry["run_id"] in line]
    assert row.split() == [host, entry["run_id"], "completed", "parked", row.split()[-1]]
