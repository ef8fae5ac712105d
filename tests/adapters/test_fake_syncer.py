"""FakeSyncer keeps the sync key like the real one: authorised on the source during a sync,
removed afterwards (also when the connection drops), left only by a kill in the middle, removed
by the next sync or by `sweep`; strict about roles."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.errors import ConnectionLost, InfraError
from upgrader.testing import fake_syncer
from upgrader.testing.fake_syncer import FakeSyncer
from upgrader.testing.fakes import WorldFile, new_world

NETWORKS = {"prod": "prod-net", "staging": "staging-net"}
RUN = "20261124T201500Z-3f9a"


class Killed(BaseException):
    """Stands in for SIGKILL at a pause point: nothing after it runs (no finally in the fake)."""


@pytest.fixture
def world(tmp_path: Path) -> WorldFile:
    data = new_world()
    twin = dict(data["domains"]["mailhost"], nics={"52:54:00:00:00:01": "staging-net"}, links={"52:54:00:00:00:01": True},
                guest="g1")
    data["domains"]["mailhost-twin"] = twin
    data["guests"]["g1"] = dict(data["guests"]["g0"], mail=[])
    path = tmp_path / "world.json"
    WorldFile(path).write(data)
    return WorldFile(path)


def keys(world: WorldFile, guest: str) -> list[str]:
    return list(world.read()["guests"][guest].get("authorized_sync_keys", []))


def test_the_key_is_there_only_during_the_sync(world: WorldFile, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(fake_syncer, "maybe_pause", lambda point: seen.append(keys(world, "g0")) if point.startswith("during:") else None)
    stats = FakeSyncer(world, NETWORKS, RUN).sync("prod", "staging", [("/var/mail", [])], final=False)
    assert seen == [[stats.key_id]] and stats.key_id.startswith(f"upgrader-sync-{RUN}-")
    assert keys(world, "g0") == [] and world.read()["guests"]["g1"]["mail"]


def test_a_dropped_connection_still_removes_the_key(world: WorldFile) -> None:
    with world.change() as w:
        w["sync_drops"] = ["pass"]
    with pytest.raises(ConnectionLost):
        FakeSyncer(world, NETWORKS, RUN).sync("prod", "staging", [("/var/mail", [])], final=False)
    assert keys(world, "g0") == []


def test_a_kill_leaves_the_key_for_the_next_sync_or_a_sweep(world: WorldFile, monkeypatch: pytest.MonkeyPatch) -> None:
    def kill(point: str) -> None:
        if point == "during:sync:pass":
            raise Killed

    monkeypatch.setattr(fake_syncer, "maybe_pause", kill)
    syncer = FakeSyncer(world, NETWORKS, RUN)
    with pytest.raises(Killed):
        syncer.sync("prod", "staging", [("/var/mail", [])], final=False)
    left = keys(world, "g0")
    assert len(left) == 1 and left[0].startswith(f"upgrader-sync-{RUN}-")
    monkeypatch.setattr(fake_syncer, "maybe_pause", lambda point: None)
    syncer.sync("prod", "staging", [("/var/mail", [])], final=True)  # the next sync drops it first
    assert keys(world, "g0") == []

    monkeypatch.setattr(fake_syncer, "maybe_pause", kill)
    with pytest.raises(Killed):
        syncer.sync("prod", "staging", [("/var/mail", [])], final=False)
    assert syncer.sweep(["prod", "staging"], "20991231T000000Z-ffff") == 0  # another run's: kept
    assert syncer.sweep(["prod", "staging"], RUN) == 1 and keys(world, "g0") == []
    assert syncer.sweep(["prod", "staging"]) == 0  # nothing there: fine
    sweeps = [e for e in world.read()["effects"] if e["op"] == "sweep_keys"]
    assert [e["removed"] for e in sweeps] == [0, 1, 0] and sweeps[1]["run_id"] == RUN


def test_sweep_skips_a_guest_that_does_not_answer_unless_strict(world: WorldFile) -> None:
    with world.change() as w:
        w["guests"]["g0"]["authorized_sync_keys"] = [f"upgrader-sync-{RUN}-0badf00d"]
        w["domains"]["mailhost-twin"]["running"] = False
    syncer = FakeSyncer(world, NETWORKS, RUN)
    with pytest.raises(InfraError):
        syncer.sweep(["staging"], strict=True)
    assert syncer.sweep(["staging", "prod"]) == 1
    assert world.read()["effects"][-1]["unreachable"] == ["staging"]
    with pytest.raises(ValueError, match="unknown role"):
        syncer.sweep(["old"])
    with pytest.raises(ValueError, match="unknown role"):
        syncer.sync("prod", "old", [("/var/mail", [])], final=False)
