"""The package proxy for the isolated twin (plan `staging.packages`) through the fakes: the forward
is open on the twin's connection exactly while the twin's steps run, those steps get http_proxy,
nothing else does; a refused forward holds the run with its hint; a forward no test expected
fails loudly; a resumed run opens it again (a forward dies with its process's connection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from upgrader import app
from upgrader.errors import ForwardRefused
from upgrader.events import Event, Notice
from upgrader.phases import Phase
from upgrader.plan import parse_plan
from upgrader.store import RunStore
from upgrader.testing.crash import Cli
from upgrader.testing.fakes import UnexpectedForward, WorldFile
from upgrader.testing.scenario import FAKE_PLAN
from upgrader.testing.world import expect_plan

PACKAGES = '  packages: {proxy: "http://127.0.0.1:3142", port: 8142}\n'
FORWARD = {"listen_port": 8142, "host": "127.0.0.1", "port": 3142}
ENV = {name: "http://127.0.0.1:8142" for name in ("http_proxy", "HTTP_PROXY", "UPGRADER_PACKAGE_PROXY")}
ENV.update(no_proxy="localhost,127.0.0.1,::1", NO_PROXY="localhost,127.0.0.1,::1")


def proxy_plan(tmp_path: Path, world: WorldFile, *, expect: bool = True) -> Path:
    text = FAKE_PLAN.format(world=world.path, keep="1h").replace("  network: stg-net\n", "  network: stg-net\n" + PACKAGES)
    path = tmp_path / "proxy.yml"
    path.write_text(text)
    if expect:
        with world.change() as data:
            expect_plan(data, parse_plan(text, str(path)))
    return path


def context(tmp_path: Path, events: list[Event] | None = None) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [events.append] if events is not None else [])


def effects(world: WorldFile) -> list[dict[str, Any]]:
    return list(json.loads(world.path.read_text())["effects"])


def test_twin_steps_run_with_the_forward_and_the_proxy_env(tmp_path: Path, fake_world: WorldFile) -> None:
    events: list[Event] = []
    record = app.start(context(tmp_path, events), app.StartOptions("mailhost", str(proxy_plan(tmp_path, fake_world))))
    assert record.phase == Phase.COMPLETED
    done = effects(fake_world)
    ops = [e["op"] for e in done if e["op"] in ("forward", "unforward")]
    assert ops == ["forward", "unforward", "forward", "unforward"]  # upgrade, then validate_staging
    assert all({k: e[k] for k in FORWARD} == FORWARD and e["role"] == "staging" for e in done if e["op"] in ops)
    upgrade = [e for e in done if e["op"] == "run" and "labos-update" in e["cmd"]]
    assert len(upgrade) == 3
    assert all(e["forwards"] == [FORWARD] and e["env"] == ENV for e in upgrade)
    release = [e for e in done if e["op"] == "run" and e["cmd"] == "cat /etc/labos-release"]
    twin, prod = ([e for e in release if e["role"] == r] for r in ("staging", "prod"))
    assert twin and all(e["forwards"] == [FORWARD] and e["env"] == ENV for e in twin)  # validate on the twin
    assert prod and all("forwards" not in e and "env" not in e for e in prod)  # the differential run on prod
    # nothing after validate_staging runs with it (presync's rehearsal on the twin, the cutover)
    last_unforward = max(i for i, e in enumerate(done) if e["op"] == "unforward")
    assert all("forwards" not in e and "env" not in e for e in done[last_unforward:] if e["op"] == "run")
    assert any(isinstance(e, Notice) and "http://127.0.0.1:8142" in e.text for e in events)


def test_without_packages_no_forward_and_no_env(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    assert app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan))).phase == Phase.COMPLETED
    done = effects(fake_world)
    assert not [e for e in done if e["op"] in ("forward", "unforward", "unexpected_forward")]
    assert all("env" not in e and "forwards" not in e for e in done if e["op"] == "run")


def test_a_refused_forward_holds_the_run_before_any_step(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = proxy_plan(tmp_path, fake_world)
    with fake_world.change() as world:
        world["faults"].append("forward:staging")
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.HELD
    error = record.error
    assert error is not None and error.kind == "ForwardRefused" and error.phase == Phase.UPGRADE
    assert "refused a remote forward on its 127.0.0.1:8142" in error.message
    assert error.hint == ForwardRefused.default_hint and "AllowTcpForwarding" in error.hint
    assert not [e for e in effects(fake_world) if e["op"] == "run" and "labos-update" in e["cmd"]]


def test_a_forward_nobody_expected_fails_loudly(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = proxy_plan(tmp_path, fake_world, expect=False)
    with pytest.raises(UnexpectedForward, match="unexpected remote forward 127.0.0.1:8142 -> 127.0.0.1:3142"):
        app.start(context(tmp_path), app.StartOptions("mailhost", str(plan)))
    assert [e["op"] for e in effects(fake_world) if "forward" in e["op"]] == ["unexpected_forward"]


def test_dry_run_shows_the_forward(tmp_path: Path, fake_world: WorldFile) -> None:
    _, _, phases = app.dry_run(app.StartOptions("mailhost", str(proxy_plan(tmp_path, fake_world))))
    lines = {p.phase: p.actions for p in phases}
    for phase in (Phase.UPGRADE, Phase.VALIDATE_STAGING):
        assert any("127.0.0.1:8142 forwarded" in line and "127.0.0.1:3142" in line for line in lines[phase])


def test_a_resumed_run_opens_the_forward_again(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = proxy_plan(tmp_path, fake_world)
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("after:run:labos-update fetch", "start", "mailhost", "--plan", str(plan), reached=tmp_path / "reached")
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    runs = [e for e in effects(fake_world) if e["op"] == "run" and "labos-update" in e["cmd"]]
    assert [e["cmd"] for e in runs] == ["labos-update fetch", "labos-update install", "labos-update install"]
    # each ran with a forward of its own process open (the killed process's forward died with it)
    assert all(e["forwards"] == [FORWARD] and e["env"] == ENV for e in runs)
    assert [e["op"] for e in effects(fake_world) if e["op"] in ("forward", "unforward")] == [
        "forward", "forward", "unforward", "forward", "unforward"]
