"""The client hold in the engine, on the fakes: on before the quiesce's first command, off after
the service answers; released before the rollback gives the network back; none at all with
`takeover.hold: []`; `upgrader status` names a hold that may still be on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from upgrader import app
from upgrader.events import Notice
from upgrader.app_status import held_clients_of
from upgrader.phases import Phase
from upgrader.ports import client_hold_name
from upgrader.plan import load_plan, parse_plan
from upgrader.record import RunRecord
from upgrader.steps.base import Journal, StepContext
from upgrader.steps.client_hold import hold_in_doubt
from upgrader.steps.cutover import Cutover
from upgrader.steps.staging import teardown
from upgrader.store import RunStore
from upgrader.testing.fakes import FakeHypervisor, WorldFile, build
from upgrader.testing.scenario import FAKE_PLAN

MAC = "52:54:00:12:34:56"


def context(tmp_path: Path) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [])


def world_of(wf: WorldFile) -> dict[str, Any]:
    return json.loads(wf.path.read_text())


def index(effects: list[dict[str, Any]], **match: Any) -> int:
    found = [i for i, e in enumerate(effects) if all(e.get(k) == v for k, v in match.items())]
    assert found, f"no effect {match}"
    return found[0]


def no_hold_left(world: dict[str, Any]) -> None:
    assert world["nwfilters"] == {}
    assert not any(world["client_holds"].values()), world["client_holds"]


def keys(tmp_path: Path) -> list[tuple[str, str]]:
    _, entries = app.journal(context(tmp_path), "mailhost")
    return [(str(e["kind"]), str(e["key"])) for e in entries if e.get("kind") in ("begin", "done")]


def test_held_from_before_the_quiesce_until_the_service_answers(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    world = world_of(fake_world)
    effects = world["effects"]
    name = client_hold_name(record.run_id)
    define = index(effects, op="define_client_hold")
    hold = index(effects, op="hold_clients")
    quiesce = index(effects, op="run", role="prod", cmd="/etc/init.d/smtpd stop")
    back = index(effects, op="wait_answers", role="prod")
    release = index(effects, op="release_clients")
    undefine = index(effects, op="undefine_client_hold")
    assert effects[define]["ports"] == [25] and effects[define]["name"] == name  # the plan's smtp check
    assert effects[hold] == {"op": "hold_clients", "domain": "mailhost", "mac": MAC, "name": name}
    assert define < hold < quiesce < back < release < undefine
    assert effects[release]["domain"] == "mailhost"
    no_hold_left(world)
    order = [k for kind, k in keys(tmp_path) if kind == "done"]
    assert order.index("cutover.hold_clients") + 1 == order.index("cutover.quiesce")  # nothing in between
    assert order.index("cutover.service_back") + 2 == order.index("cutover.persist_nics") + 1 == order.index("cutover.release_clients")
    assert record.output("cutover.hold_clients")["macs"] == [MAC]


def test_a_hold_that_cannot_be_set_up_fails_open_and_the_cutover_goes_on(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """A NIC with a filter of its own (clean-traffic) cannot be held: the cutover goes on without
    the hold and says so; the upgrade is not rolled back for it, the NIC's own filter is untouched."""
    with fake_world.change() as world:
        world["client_holds"] = {"mailhost": {MAC: "clean-traffic"}}
    said: list[Notice] = []
    listen = lambda event: said.append(event) if isinstance(event, Notice) else None  # noqa: E731
    record = app.start(app.Context(RunStore(tmp_path / "state"), [listen]), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    hold = record.output("cutover.hold_clients")
    assert hold["filter"] is None and hold["macs"] == [] and "filter" in hold["skipped"]
    world = world_of(fake_world)
    assert world["nwfilters"] == {}  # the run's filter was defined, then dropped again
    assert world["client_holds"]["mailhost"] == {MAC: "clean-traffic"}
    assert [n for n in said if n.level == "warning" and "not held during this cutover" in n.text], said
    assert not [e for e in world["effects"] if e["op"] == "hold_clients"]


def test_hold_off_does_nothing(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "nohold.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h").replace(
        "  production_network: prod-net\n", "  production_network: prod-net\n  hold: []\n"))
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.COMPLETED
    ops = {e["op"] for e in world_of(fake_world)["effects"]}
    assert not ops & {"define_client_hold", "hold_clients", "release_clients", "undefine_client_hold"}
    assert not any("clients" in k for _, k in keys(tmp_path))
    lines = Cutover().describe(load_plan(plan))
    assert lines[1].startswith("no client hold") and not any("release" in line for line in lines)


def test_final_sync_fails_while_held_released_before_the_network_comes_back(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("sync:final")
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None and record.error.phase == Phase.CUTOVER
    world = world_of(fake_world)
    no_hold_left(world)
    assert [e["op"] for e in world["effects"]].count("release_clients") == 1
    journal = keys(tmp_path)
    assert ("done", "cutover.hold_clients") in journal and ("begin", "cutover.release_clients") not in journal
    assert journal.index(("done", "rollback.release_clients")) < journal.index(("begin", "rollback.network"))
    assert world["domains"]["mailhost"]["links"] == {MAC: True}


def test_service_never_back_released_before_the_old_vm_links_up(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Taken over while held, the new prod never answers: the rollback releases the old VM before
    its link comes up again - it never serves linked up and held."""
    with fake_world.change() as world:
        world["faults"].append("probe:prod")  # service_back never sees the service
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None and record.error.phase == Phase.CUTOVER
    world = world_of(fake_world)
    effects = world["effects"]
    release = index(effects, op="release_clients", domain="mailhost")
    link_up = index(effects, op="set_link", domain="mailhost", up=True)
    assert release < link_up
    no_hold_left(world)


def test_rollback_after_a_release_releases_nothing_again(tmp_path: Path, fake_world: WorldFile) -> None:
    """Verify fails after a clean cutover: the hold is off already, the rollback has nothing to release."""
    plan = tmp_path / "verify.yml"
    verify = "verify:\n  - name: smtp\n    smtp: {port: 25}\n  - name: app\n    command: {run: app-selftest}\n"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h").replace("sync:\n", verify + "sync:\n", 1))
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "^app-selftest$", "rc": 1})
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None and record.error.phase == Phase.VERIFY
    journal = keys(tmp_path)
    assert ("done", "cutover.release_clients") in journal
    assert not any(k == "rollback.release_clients" for _, k in journal)
    world = world_of(fake_world)
    assert [e["op"] for e in world["effects"]].count("release_clients") == 1
    no_hold_left(world)


def test_status_names_a_hold_in_doubt() -> None:
    begin = {"kind": "begin", "key": "cutover.hold_clients", "domain": "mailhost", "ports": [25, 143]}
    assert held_clients_of([begin]) == "mailhost:25, 143"
    assert held_clients_of([begin, {"kind": "done", "key": "cutover.hold_clients", "outputs": {}}]) == "mailhost:25, 143"
    released = [begin, {"kind": "begin", "key": "rollback.release_clients"},
                {"kind": "done", "key": "rollback.release_clients", "outputs": {}}]
    assert held_clients_of(released) is None
    assert held_clients_of(released[:2]) == "mailhost:25, 143"  # a release begun is not a release done
    assert held_clients_of([]) is None


class ListJournal:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


def step_context(tmp_path: Path, wf: WorldFile, entries: list[dict[str, Any]]) -> StepContext:
    plan = parse_plan(FAKE_PLAN.format(world=wf.path, keep="1h"), str(tmp_path / "fake.yml"))
    record = RunRecord(run_id=RUN_ID, host="mailhost", plan_path=str(tmp_path / "fake.yml"), plan_sha256="0" * 64)
    io = ListJournal()
    return StepContext(plan, record, build(plan, RUN_ID), Journal.from_entries(io, entries), lambda _: None)


RUN_ID = "20261202T080000Z-0000001"


def test_teardown_releases_a_hold_a_run_left_in_doubt(tmp_path: Path, fake_world: WorldFile) -> None:
    """Every way out: a teardown finds the hold begun and never released, and releases it."""
    name = client_hold_name(RUN_ID)
    hv = FakeHypervisor(fake_world)
    hv.define_client_hold(name, [25])
    hv.hold_clients("mailhost", MAC, name)
    begin = {"kind": "begin", "key": "cutover.hold_clients", "domain": "mailhost", "ports": [25], "ts": "2026-12-02T08:00:00+00:00"}
    ctx = step_context(tmp_path, fake_world, [begin])
    assert hold_in_doubt(ctx.journal)
    teardown(ctx, "abort")
    no_hold_left(world_of(fake_world))
    assert "abort.release_clients" in ctx.journal.done and not hold_in_doubt(ctx.journal)
    teardown(ctx, "abort")  # again: nothing more
    assert [e["op"] for e in world_of(fake_world)["effects"]].count("release_clients") == 1


def test_teardown_without_a_hold_touches_nothing(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx = step_context(tmp_path, fake_world, [])
    teardown(ctx, "abort")
    assert ctx.journal.begun == {} and "release_clients" not in {e["op"] for e in world_of(fake_world)["effects"]}
