"""Shared fixtures: a fake world (the in-package fakes) and a plan pointing at it; the real lab
(one per test session, always torn down — also when a test fails or the run is interrupted).
The lab needs root, the Debian packages in tools/bootstrap.sh and about 1 GiB of RAM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrader.lab import Lab
from upgrader.plan import parse_plan
from upgrader.testing.fakes import WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS
from upgrader.testing.world import expect_plan


FULL = bool(os.environ.get("UPGRADER_FULL"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long scenarios (marker `full`) run only in the full run: `UPGRADER_FULL=1 bash tools/bootstrap.sh
    test -m full` (about 10 minutes more); CI keeps under its hour without them."""
    if FULL:
        return
    skip = pytest.mark.skip(reason="long scenario: runs with UPGRADER_FULL=1 (docs/reliability.md)")
    for item in items:
        if item.get_closest_marker("full"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """VM locks (by UUID, machine-wide) go to a per-test dir, not /run/lock/upgrader."""
    monkeypatch.setenv("UPGRADER_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))


@pytest.fixture
def fake_world(tmp_path: Path) -> WorldFile:
    world = new_world(production_network="prod-net")
    world["commands"] = list(RELEASE_COMMANDS)
    wf = WorldFile(tmp_path / "world.json")
    expect_plan(world, parse_plan(FAKE_PLAN.format(world=wf.path, keep="1h"), str(tmp_path / "fake.yml")))
    wf.write(world)
    return wf


@pytest.fixture
def fake_plan(tmp_path: Path, fake_world: WorldFile) -> Path:
    path = tmp_path / "fake.yml"
    path.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h"))
    return path


@pytest.fixture
def abort_plan(fake_plan: Path) -> Path:
    """The fake plan with `on_failure: abort`: a failure before cutover removes the twin at once."""
    path = fake_plan.with_name("fake-abort.yml")
    path.write_text(fake_plan.read_text() + "on_failure: abort\n")
    return path


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, libvirtd)")
    the_lab = Lab(os.environ.get("UPGRADER_LAB_DIR"), progress=_progress)
    try:
        the_lab.down()  # whatever an earlier run or the demo left (e.g. a twin serving as prod)
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
