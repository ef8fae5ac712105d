"""An `ansible:` upgrade step on the fakes (upgrader/testing/fake_playbooks.py): the playbook runs
once on the twin and its recap is journaled (typed), its output streams as step output; a failed
play holds the run with command, exit code and tail, and `retry` runs the playbook again; a twin
lost mid-play is reconnected and the playbook run again; a refused host key holds without running
anything; a crash while it runs (or after, before the journal knew) runs it again on resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader import app
from upgrader.events import Event, StepOutput
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.steps.playbook import PlaybookOutputs
from upgrader.store import RunStore
from upgrader.testing.crash import Cli, guest, world_of
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN, effects

FETCH_STEP = "  - name: fetch\n    run: labos-update fetch\n"
ANSIBLE_STEP = ("  - name: release upgrade\n    ansible:\n      playbook: ansible/upgrade.yml\n"
                "      extra_vars: {release: \"2\"}\n      tags: [upgrade]\n")
OUTPUT = ("PLAY [all] ****\nTASK [switch sources] ****\nchanged: [mailhost]\n"
          "PLAY RECAP ****\nmailhost : ok=4 changed=3 unreachable=0 failed=0 skipped=1")


@pytest.fixture
def ansible_plan(tmp_path: Path, fake_world: WorldFile) -> Path:
    """The fake plan whose first step is an `ansible:` step; its playbook canned in the world."""
    (tmp_path / "ansible").mkdir()
    (tmp_path / "ansible" / "upgrade.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "known_hosts").write_text("192.0.2.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinnedPinnedPinned0\n")
    text = FAKE_PLAN.format(world=fake_world.path, keep="1h")
    assert FETCH_STEP in text
    text = text.replace(FETCH_STEP, ANSIBLE_STEP).replace(
        "  staging: {host: 192.0.2.10}", "  staging: {host: 192.0.2.10, known_hosts: known_hosts}")
    path = tmp_path / "ansible.yml"
    path.write_text(text)
    with fake_world.change() as world:
        world["playbooks"] = [{"match": r"/ansible/upgrade\.yml$", "output": OUTPUT,
                               "recap": {"ok": 4, "changed": 3, "skipped": 1}, "set": {"sources": "trixie"}}]
    return path


def context(tmp_path: Path, events: list[Event]) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [events.append])


def journal(tmp_path: Path, record: RunRecord) -> list[dict[str, object]]:
    return RunStore(tmp_path / "state").journal(record.host, record.run_id)


def canned(world: WorldFile, **entry: object) -> None:
    with world.change() as data:
        data["playbooks"] = [{"match": r"/ansible/upgrade\.yml$", **entry}, *data["playbooks"]]


def test_the_playbook_runs_once_on_the_twin_and_its_recap_is_journaled(tmp_path: Path, fake_world: WorldFile,
                                                                       ansible_plan: Path) -> None:
    events: list[Event] = []
    record = app.start(context(tmp_path, events), app.StartOptions("mailhost", str(ansible_plan)))
    assert record.phase == Phase.COMPLETED
    runs = effects(fake_world, "playbook")
    assert len(runs) == 1
    assert runs[0]["domain"] == "mailhost-twin" and runs[0]["role"] == "staging"
    assert runs[0]["path"] == str(tmp_path / "ansible" / "upgrade.yml")
    assert runs[0]["tags"] == ["upgrade"] and runs[0]["extra_vars"] == {"release": "2"}
    assert runs[0]["proxy"] is None
    assert runs[0]["workdir"] == str(tmp_path / "state" / "mailhost" / record.run_id / "ansible")
    outputs = PlaybookOutputs.model_validate(record.output("upgrade[0]"))
    assert outputs == PlaybookOutputs(rc=0, playbook=runs[0]["path"], ok=4, changed=3, skipped=1)
    streamed = [e.line for e in events if isinstance(e, StepOutput) and e.key == "upgrade[0]"]
    assert streamed == OUTPUT.splitlines()
    entries = [e["kind"] for e in journal(tmp_path, record) if e.get("key") == "upgrade[0]"]
    assert entries == ["begin", "done"]
    assert guest(world_of(fake_world), "mailhost-twin")["sources"] == "trixie"  # the playbook's change, on the twin


def test_a_failed_play_holds_the_run_and_retry_runs_the_playbook_again(tmp_path: Path, fake_world: WorldFile,
                                                                      ansible_plan: Path) -> None:
    broken = {"rc": 2, "recap": {"ok": 2, "failed": 1},
              "output": "TASK [full upgrade] ****\nfatal: [mailhost]: FAILED! => dpkg: error processing dovecot-core"}
    canned(fake_world, **broken)
    ctx = context(tmp_path, [])
    record = app.start(ctx, app.StartOptions("mailhost", str(ansible_plan)))
    assert record.phase == Phase.HELD and record.held is not None
    assert record.held.step == "upgrade[0]" and record.held.title == "release upgrade"
    assert record.held.rc == 2
    assert record.held.command is not None and record.held.command.endswith("ansible/upgrade.yml")
    assert record.held.tail is not None and "error processing dovecot-core" in record.held.tail
    assert "failed=1" in record.held.message and "ansible-playbook exited 2" in record.held.message
    assert len(effects(fake_world, "playbook")) == 1
    with fake_world.change() as world:  # the operator fixed the twin
        world["playbooks"] = [e for e in world["playbooks"] if e.get("rc") != 2]
    record = app.retry(ctx, "mailhost", "alice")
    assert record.phase == Phase.COMPLETED
    assert len(effects(fake_world, "playbook")) == 2  # the whole playbook again: idempotent
    assert record.output("upgrade[0]")["changed"] == 3


def test_a_twin_lost_mid_play_is_reconnected_and_the_playbook_run_again(tmp_path: Path, fake_world: WorldFile,
                                                                       ansible_plan: Path) -> None:
    with fake_world.change() as world:
        world["playbooks"][0]["unreachable"] = 1
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(ansible_plan)))
    assert record.phase == Phase.COMPLETED
    assert [e["lost"] for e in effects(fake_world, "playbook")] == [True, False]
    lost = [e for e in journal(tmp_path, record) if e["kind"] == "connection_lost"]
    assert [e["key"] for e in lost] == ["upgrade[0]"]


def test_a_host_key_not_pinned_holds_without_running_the_playbook(tmp_path: Path, fake_world: WorldFile,
                                                                 ansible_plan: Path) -> None:
    canned(fake_world, host_key=True)
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(ansible_plan)))
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "upgrade[0]"
    assert "not the pinned one" in record.held.message
    assert effects(fake_world, "playbook") == [] and len(effects(fake_world, "playbook_refused")) == 1


def test_a_playbook_nobody_canned_fails_the_test_loudly(tmp_path: Path, fake_world: WorldFile, ansible_plan: Path) -> None:
    with fake_world.change() as world:
        world["playbooks"] = []
    with pytest.raises(AssertionError, match="unexpected playbook"):
        app.start(context(tmp_path, []), app.StartOptions("mailhost", str(ansible_plan)))


def test_dry_run_says_what_the_step_runs(ansible_plan: Path) -> None:
    _, _, phases = app.dry_run(app.StartOptions("mailhost", str(ansible_plan)))
    upgrade = next(p for p in phases if p.phase == Phase.UPGRADE)
    line = next(text for text in upgrade.actions if text.startswith("[0] ansible-playbook"))
    assert str(ansible_plan.parent / "ansible" / "upgrade.yml") in line and "--tags upgrade" in line
    assert "over ssh.staging" in line


@pytest.mark.parametrize("point", ["before:playbook:upgrade.yml", "after:playbook:upgrade.yml"])
def test_a_crash_while_the_playbook_runs_runs_it_again_on_resume(tmp_path: Path, fake_world: WorldFile,
                                                                 ansible_plan: Path, point: str) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at(point, "start", "mailhost", "--plan", str(ansible_plan), reached=tmp_path / "reached")
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    expected = 1 if point.startswith("before") else 2  # killed after it ran: in doubt, run again
    assert len(effects(fake_world, "playbook")) == expected
    assert cli.record()["outputs"]["upgrade[0]"]["changed"] == 3


def test_start_is_refused_without_ansible_core_and_a_missing_playbook_is_named(tmp_path: Path, fake_world: WorldFile,
                                                                               ansible_plan: Path) -> None:
    from upgrader.preflight_checks import PreflightFailed

    with fake_world.change() as world:
        world["faults"].append("ansible")
    (tmp_path / "ansible" / "upgrade.yml").unlink()
    with pytest.raises(PreflightFailed) as info:
        app.start(context(tmp_path, []), app.StartOptions("mailhost", str(ansible_plan)))
    message = info.value.message
    assert "ansible: fake: ansible-playbook is not installed" in message
    assert "pip install 'upgrader[ansible]'" in message  # the hint travels with the inhibitor
    assert f"upgrade[0].ansible.playbook: {tmp_path}/ansible/upgrade.yml: no such file" in message
    assert effects(fake_world, "playbook") == [] and effects(fake_world, "set_claim") == []


def test_with_a_package_proxy_the_playbook_uses_the_forward_upgrader_holds(tmp_path: Path, fake_world: WorldFile,
                                                                           ansible_plan: Path) -> None:
    """The upgrade phase holds the proxy's forward on upgrader's own connection: the playbook gets
    its URL (`upgrader_package_proxy`) and its ssh asks for no second forward of the same port."""
    from upgrader.plan import parse_plan
    from upgrader.testing.world import expect_plan

    text = ansible_plan.read_text().replace("  network: stg-net\n",
                                            '  network: stg-net\n  packages: {proxy: "http://127.0.0.1:3142"}\n')
    ansible_plan.write_text(text)
    with fake_world.change() as world:
        expect_plan(world, parse_plan(text, str(ansible_plan)))
    record = app.start(context(tmp_path, []), app.StartOptions("mailhost", str(ansible_plan)))
    assert record.phase == Phase.COMPLETED
    runs = effects(fake_world, "playbook")
    assert runs[0]["proxy"] == {"twin_url": "http://127.0.0.1:3142", "listen_port": 3142, "host": "127.0.0.1",
                                "port": 3142, "already_forwarded": True}
    ops = [e["op"] for e in effects(fake_world) if e["op"] in ("forward", "unforward", "playbook")]
    assert ops[:3] == ["forward", "playbook", "unforward"]
