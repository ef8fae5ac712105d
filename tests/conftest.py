"""Shared fixtures: a fake world (the in-package fakes) and a plan pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.testing.fakes import WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS


@pytest.fixture
def fake_world(tmp_path: Path) -> WorldFile:
    world = new_world(production_network="prod-net")
    world["commands"] = list(RELEASE_COMMANDS)
    wf = WorldFile(tmp_path / "world.json")
    wf.write(world)
    return wf


@pytest.fixture
def fake_plan(tmp_path: Path, fake_world: WorldFile) -> Path:
    path = tmp_path / "fake.yml"
    path.write_text(FAKE_PLAN.format(world=fake_world.path, keep="0s"))
    return path
