"""The takeover inside the downtime window changes the running VMs only (one LIVE update per
NIC); `cutover.persist_nics` writes the same placement into both VMs' persistent definitions
once the service is back. A crash in between is finished on resume: otherwise a destroy + start
of the new prod would bring it back on the staging network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from upgrader.testing.crash import Cli, op_counts, world_of
from upgrader.testing.fakes import FakeHypervisor, WorldFile

TWIN, OLD, PROD, STAGING = "mailhost-twin", "mailhost", "prod-net", "stg-net"
NIC_OPS = ("set_link", "move_nic", "persist_link", "persist_nic")


def journal(cli: Cli) -> list[dict[str, Any]]:
    (path,) = (cli.state / "mailhost").glob("*/journal.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def done_order(cli: Cli) -> list[str]:
    return [e["key"] for e in journal(cli) if e.get("kind") == "done"]


def restarted(world: WorldFile, tmp_path: Path, name: str) -> dict[str, str]:
    """`name`'s NICs after a destroy + start, on a copy of the world (the run's world is kept)."""
    copy = WorldFile(tmp_path / f"restart-{name}.json")
    shutil.copy(world.path, copy.path)
    hv = FakeHypervisor(copy)
    hv.destroy(name)
    hv.start(name)
    info = hv.domain(name)
    assert info is not None
    return info.nics


def test_the_window_moves_the_running_vms_only_and_persists_after_the_service_is_back(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    done = cli.run("start", "mailhost", "--plan", str(fake_plan))
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    world = world_of(fake_world)
    nic_ops = [(e["op"], e["domain"], e["scope"]) for e in world["effects"] if e["op"] in NIC_OPS]
    # in the window: the old VM's link down, the twin onto prod, live only; then the definitions
    assert nic_ops == [("set_link", OLD, "live"), ("move_nic", TWIN, "live"),
                       ("persist_link", OLD, "config"), ("persist_nic", TWIN, "config")]
    order = done_order(cli)
    assert order.index("cutover.takeover") < order.index("cutover.service_back") < order.index("cutover.persist_nics")
    hv = FakeHypervisor(fake_world)
    twin, old = hv.persistent_nics(TWIN), hv.persistent_nics(OLD)
    assert twin is not None and set(twin.nics.values()) == {PROD}
    assert old is not None and not any(old.links.values())
    assert set(restarted(fake_world, tmp_path, TWIN).values()) == {PROD}


def test_a_crash_between_the_live_move_and_the_persisting_is_finished_on_resume(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("begin:cutover.persist_nics", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    hv = FakeHypervisor(fake_world)
    twin_live, twin_config = hv.domain(TWIN), hv.persistent_nics(TWIN)
    assert twin_live is not None and set(twin_live.nics.values()) == {PROD}  # serving, live
    assert twin_config is not None and set(twin_config.nics.values()) == {STAGING}  # its definition: staging
    # the risk the step closes: a destroy + start now would bring the new prod back on staging
    assert set(restarted(fake_world, tmp_path, TWIN).values()) == {STAGING}

    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    counts = op_counts(world_of(fake_world))
    # the takeover's probe reads the live placement: not redone; the definitions written once
    assert {op: counts[op] for op in NIC_OPS} == {"set_link": 1, "move_nic": 1, "persist_link": 1, "persist_nic": 1}
    twin_config, old_config = hv.persistent_nics(TWIN), hv.persistent_nics(OLD)
    assert twin_config is not None and set(twin_config.nics.values()) == {PROD}
    assert old_config is not None and not any(old_config.links.values())
    assert set(restarted(fake_world, tmp_path, TWIN).values()) == {PROD}


def test_persisting_already_written_is_probed_not_redone(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("after:persist_nic:prod-net", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    counts = op_counts(world_of(fake_world))
    assert {op: counts[op] for op in NIC_OPS} == {"set_link": 1, "move_nic": 1, "persist_link": 1, "persist_nic": 1}
    outputs = [e for e in journal(cli) if e.get("key") == "cutover.persist_nics" and e.get("kind") == "done"]
    assert len(outputs) == 1 and outputs[0]["outputs"] == {"probed": True}


def test_a_twin_that_stopped_before_its_definition_was_written_is_kept_by_a_rollback(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Killed before persist_nics, then the new prod stops: its definition still says staging,
    but it served on prod (and took mail). A rollback must keep it, not remove it as unmoved."""
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("begin:cutover.persist_nics", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    FakeHypervisor(fake_world).destroy(TWIN)
    cli.run("rollback", "mailhost", "--yes")
    world = world_of(fake_world)
    assert TWIN in world["domains"], "the twin that served on prod was removed"
    decision = [e for e in journal(cli) if e.get("key") == "rollback.plan" and e.get("kind") == "done"]
    assert decision and decision[-1]["outputs"]["moved"] is True
