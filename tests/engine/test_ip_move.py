"""ip_move on the fakes: the twin gets MACs of its own at clone time; takeover moves those NICs
onto the production net after the old VM's links go down, then the new prod claims the service
address with gratuitous ARPs; give-back (rollback) is the mirror and the old VM claims it again."""

from __future__ import annotations

import json
from pathlib import Path

from upgrader import app
from upgrader.phases import Phase
from upgrader.plan import load_plan
from upgrader.steps.takeover import twin_mac
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN, effects

IP_MOVE = "  strategy: ip_move\n  address: 192.0.2.10/24\n  garp_count: 3\n"


def ip_plan(tmp_path: Path, world: WorldFile, keep: str = "1h") -> Path:
    text = FAKE_PLAN.format(world=world.path, keep=keep).replace("  strategy: mac_move\n", IP_MOVE)
    path = tmp_path / "ip.yml"
    path.write_text(text)
    return path


def test_twin_macs_are_stable_and_differ(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = load_plan(ip_plan(tmp_path, fake_world))
    mac = "52:54:00:c0:02:0a"
    assert twin_mac(plan, mac) == twin_mac(plan, mac) != mac
    assert twin_mac(plan, mac).startswith("52:54:0")


def test_ip_move_end_to_end(tmp_path: Path, fake_world: WorldFile) -> None:
    path = ip_plan(tmp_path, fake_world, keep="1h")
    plan = load_plan(path)
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(path)))
    assert record.phase == Phase.COMPLETED, record.error
    world = json.loads(fake_world.path.read_text())
    old, twin = world["domains"]["mailhost"], world["domains"]["mailhost-twin"]
    (prod_mac,) = old["nics"]
    assert twin["nics"] == {twin_mac(plan, prod_mac): "prod-net"} and old["links"] == {prod_mac: False}
    claims = [e for e in effects(fake_world, "run") if "arping -U" in e["cmd"]]
    assert len(claims) == 1 and claims[0]["role"] == "prod" and claims[0]["domain"] == "mailhost-twin"
    assert "192.0.2.10/24" in claims[0]["cmd"]
    assert record.output("cutover.takeover")["strategy"] == "ip_move"


def test_ip_move_rollback_gives_the_address_back(tmp_path: Path, fake_world: WorldFile) -> None:
    with fake_world.change() as world:
        world["faults"].append("probe:prod")  # verify fails on the new prod
    record = app.start(app.Context(RunStore(tmp_path / "state"), []),
                       app.StartOptions("mailhost", str(ip_plan(tmp_path, fake_world))))
    assert record.phase == Phase.ROLLED_BACK
    world = json.loads(fake_world.path.read_text())
    assert list(world["domains"]) == ["mailhost"] and all(world["domains"]["mailhost"]["links"].values())
    claims = [e["domain"] for e in effects(fake_world, "run") if "arping -U" in e["cmd"]]
    assert claims == ["mailhost-twin", "mailhost"]  # the twin took it, the old VM took it back
