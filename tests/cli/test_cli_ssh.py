"""`upgrader ssh` on the fakes: which path per phase, what is journaled, what is refused. The
`ssh` it runs is a stand-in on PATH that records its argv and the temporary known_hosts; the real
OpenSSH client against real sshd's is tests/adapters/test_ssh_real.py."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from upgrader.adapters.openssh import KEY_ALIAS
from upgrader.app_ssh import route
from upgrader.errors import IllegalAction
from upgrader.phases import Phase
from upgrader.plan import load_plan, plan_digest
from upgrader.record import RunRecord, new_run_id
from upgrader.steps.base import Journal
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

from cli_helpers import run

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxXeq8jgCVscBO6p/ZCuPObNlqMWZPA6sJK2UnFDx/u"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
SSH_SECTION = """\
ssh:
  prod: {host: 192.0.2.10, key: id_prod, known_hosts: known_hosts}
  staging: {host: 192.0.2.11, port: 2222, user: admin, known_hosts: known_hosts, proxy_command: "jump-to %h %p"}
"""
LATER = "window: {start: 2099-01-05T02:00:00, duration: 1h, timezone: UTC}\n"
FAKE_SSH = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
known = next(a.split("=", 1)[1] for a in args if a.startswith("UserKnownHostsFile="))
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps({{"argv": args, "known_hosts": open(known).read()}}) + "\\n")
print("fake ssh ran")
sys.exit(int(os.environ.get("FAKE_SSH_RC", "0")))
"""


@pytest.fixture
def ssh_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `ssh` first on PATH; each call appends {argv, known_hosts} to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    return tmp_path / "ssh.log"


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make_plan(tmp_path: Path, world: WorldFile, extra: str = "") -> Path:
    (tmp_path / "known_hosts").write_text(f"192.0.2.10 {ED}\n[192.0.2.11]:2222 {OTHER}\n")
    (tmp_path / "id_prod").write_text("not read by the stand-in\n")
    text = FAKE_PLAN.format(world=world.path, keep="1h")
    start, end = text.index("ssh:\n"), text.index("staging:\n  network")
    path = tmp_path / "ssh.yml"
    path.write_text(text[:start] + SSH_SECTION + text[end:] + extra)
    return path


def started(capfd: pytest.CaptureFixture[str], state: Path, plan: Path) -> str:
    code, out = run(capfd, "--state-dir", str(state), "start", "mailhost", "--plan", str(plan))
    assert code == 0, out
    return out


def ssh_entries(state: Path) -> list[dict[str, Any]]:
    store = RunStore(state)
    return [e for e in store.journal("mailhost", store.runs("mailhost")[-1]) if e["kind"] in ("ssh", "ssh_end")]


def test_no_run_exit_2_with_hint(capfd: pytest.CaptureFixture[str], tmp_path: Path, ssh_log: Path) -> None:
    code, out = run(capfd, "--state-dir", str(tmp_path / "state"), "ssh", "ghost", "--", "true")
    assert code == 2 and 'no runs for host "ghost"' in out and "hint:" in out and "Traceback" not in out
    assert calls(ssh_log) == []


def test_twin_while_parked_before_cutover_through_the_staging_path_and_journaled(
        capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile, ssh_log: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    state, plan = tmp_path / "state", make_plan(tmp_path, fake_world, LATER)
    started(capfd, state, plan)
    monkeypatch.setenv("FAKE_SSH_RC", "7")
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--by", "alice", "--", "sh", "-c", "exit 7")
    assert code == 7 and "fake ssh ran" in out and "upgrader:" not in out  # one command: nothing said around it
    (used,) = calls(ssh_log)
    argv = used["argv"]
    assert argv[-3:] == ["--", "192.0.2.11", "sh -c 'exit 7'"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "admin" and "-i" not in argv
    assert "ProxyCommand=jump-to 192.0.2.11 2222" in argv and "BatchMode=yes" in argv
    assert used["known_hosts"] == f"{KEY_ALIAS} {OTHER}\n"  # only the staging entry of the pinned file
    begin, end = ssh_entries(state)
    assert {k: begin[k] for k in ("by", "machine", "role", "target", "command", "phase")} == {
        "by": "alice", "machine": "twin", "role": "staging", "target": "admin@192.0.2.11:2222",
        "command": "sh -c 'exit 7'", "phase": "await_window"}
    assert end["kind"] == "ssh_end" and end["session"] == begin["session"] and end["rc"] == 7 and "ts" in begin
    # the new kinds upset neither the reconciliation nor the engine: the run goes on
    code, out = run(capfd, "--state-dir", str(state), "status", "mailhost")
    assert code == 0, out
    code, out = run(capfd, "--state-dir", str(state), "resume", "mailhost", "--now", "--yes")
    assert code == 0 and RunStore(state).latest("mailhost").phase == Phase.COMPLETED, out  # type: ignore[union-attr]


def test_prod_uses_the_prod_target_and_its_key(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                               fake_world: WorldFile, ssh_log: Path) -> None:
    state, plan = tmp_path / "state", make_plan(tmp_path, fake_world, LATER)
    started(capfd, state, plan)
    code, _ = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--prod", "--", "cat", "/var/mail/a b")
    assert code == 0
    argv = calls(ssh_log)[0]["argv"]
    assert argv[-2:] == ["192.0.2.10", "cat '/var/mail/a b'"] and argv[argv.index("-p") + 1] == "22"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_prod") and "IdentitiesOnly=yes" in argv
    assert not any(a.startswith("ProxyCommand") for a in argv)
    assert calls(ssh_log)[0]["known_hosts"] == f"{KEY_ALIAS} {ED}\n"
    assert ssh_entries(state)[0]["role"] == "prod"


def test_after_the_cutover_the_twin_is_reached_as_prod(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                       fake_world: WorldFile, ssh_log: Path) -> None:
    state = tmp_path / "state"
    started(capfd, state, make_plan(tmp_path, fake_world))  # parks in completed, keeping the old VM
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost")  # interactive: says where
    assert code == 0
    assert "the twin mailhost-twin, prod since the cutover" in out and "root@192.0.2.10:22 via ssh.prod" in out
    assert calls(ssh_log)[0]["argv"][-2:] == ["--", "192.0.2.10"]
    begin, end = ssh_entries(state)
    assert begin["role"] == "prod" and begin["command"] is None and begin["phase"] == "completed" and end["rc"] == 0


def test_works_beside_the_process_holding_the_run(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                  fake_world: WorldFile, ssh_log: Path) -> None:
    state = tmp_path / "state"
    started(capfd, state, make_plan(tmp_path, fake_world, LATER))
    with RunStore(state).lock("mailhost"):
        code, out = run(capfd, "--state-dir", str(state), "resume", "mailhost")
        assert code == 3, out  # the lock is really held
        code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", "uptime")
        assert code == 0, out
    assert [e["kind"] for e in ssh_entries(state)] == ["ssh", "ssh_end"]


def test_finished_run_refused_with_hint(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                        ssh_log: Path) -> None:
    state = tmp_path / "state"
    started(capfd, state, make_plan(tmp_path, fake_world))
    assert run(capfd, "--state-dir", str(state), "decommission", "mailhost", "--yes")[0] == 0
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--prod", "--", "true")
    assert code == 2 and "no unfinished run" in out and "upgrader show mailhost" in out and calls(ssh_log) == []


def test_no_twin_before_the_clone(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                  ssh_log: Path) -> None:
    state, plan = tmp_path / "state", make_plan(tmp_path, fake_world)
    RunStore(state).create(RunRecord(run_id=new_run_id(), host="mailhost", plan_path=str(plan),
                                     plan_sha256=plan_digest(plan)))  # a run still in preflight
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", "true")
    assert code == 2 and "there is no twin yet" in out and "upgrader ssh mailhost --prod" in out
    assert calls(ssh_log) == [] and ssh_entries(state) == []
    code, _ = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--prod", "--", "true")
    assert code == 0 and ssh_entries(state)[0]["phase"] == "preflight"


def test_changed_plan_refused(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                              ssh_log: Path) -> None:
    state, plan = tmp_path / "state", make_plan(tmp_path, fake_world, LATER)
    started(capfd, state, plan)
    plan.write_text(plan.read_text().replace("192.0.2.11", "192.0.2.99"))
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", "true")
    assert code == 2 and "cannot take" in out and "ssh.staging.host: '192.0.2.11' -> '192.0.2.99'" in out
    assert calls(ssh_log) == []


def test_plan_without_known_hosts_refused(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                          ssh_log: Path) -> None:
    state, plan = tmp_path / "state", make_plan(tmp_path, fake_world, LATER)
    plan.write_text(plan.read_text().replace("port: 2222, user: admin, known_hosts: known_hosts,", "port: 2222,"))
    started(capfd, state, plan)
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", "true")
    assert code == 2 and "no known_hosts for ssh.staging" in out and "hint:" in out and calls(ssh_log) == []


def test_ssh_client_missing(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    started(capfd, state, make_plan(tmp_path, fake_world, LATER))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", "true")
    assert code == 5 and "`ssh` is not on PATH" in out and "apt-get install openssh-client" in out
    assert ssh_entries(state) == [] and "Traceback" not in out


# ------------------------------------------------------------------ which path, by the journal


@pytest.fixture
def plan_and_record(tmp_path: Path, fake_world: WorldFile) -> tuple[Any, RunRecord]:
    path = make_plan(tmp_path, fake_world)
    return load_plan(path), RunRecord(run_id=new_run_id(), host="mailhost", plan_path=str(path), plan_sha256="0" * 64)


def journal_of(*steps: str) -> Journal:
    """`key` begun, `key+` begun and done."""
    entries: list[dict[str, Any]] = []
    for step in steps:
        key = step.rstrip("+")
        entries.append({"kind": "begin", "key": key})
        if step.endswith("+"):
            entries.append({"kind": "done", "key": key, "outputs": {}})
    return Journal.from_entries(None, entries)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps, twin, prod", [
    (["clone.define"], "staging", "prod"),
    (["clone.define+", "cutover.quiesce+"], "staging", "prod"),
    (["clone.define+", "cutover.takeover+"], "prod", "prod"),
    (["clone.define+", "cutover.takeover+", "rollback.network+"], "staging", "prod"),  # given back
    (["clone.define+", "cutover.takeover", "rollback.network+"], "staging", "prod"),
])
def test_route_follows_the_network(plan_and_record: tuple[Any, RunRecord], steps: list[str], twin: str,
                                   prod: str) -> None:
    plan, record = plan_and_record
    assert route("twin", journal_of(*steps), plan, record).role == twin
    assert route("prod", journal_of(*steps), plan, record).role == prod


@pytest.mark.parametrize("steps, refused", [
    ([], "no twin yet"),
    (["clone.define+", "cutover.takeover"], "cutover.takeover began and is not known to be done"),
    (["clone.define+", "cutover.takeover+", "rollback.network"], "rollback.network began"),
    (["clone.define+", "abort.remove_twin"], "the twin mailhost-twin is gone"),
    (["clone.define+", "cutover.takeover+", "rollback.network+", "rollback.remove_twin+"], "is gone"),
])
def test_route_refuses_the_twin_when_it_is_not_known_where(plan_and_record: tuple[Any, RunRecord],
                                                           steps: list[str], refused: str) -> None:
    plan, record = plan_and_record
    with pytest.raises(IllegalAction, match=refused) as info:
        route("twin", journal_of(*steps), plan, record)
    assert info.value.hint and "--prod" in info.value.hint
    way = route("prod", journal_of(*steps), plan, record)  # prod is always the prod path
    assert way.role == "prod"
    if "began" in refused:
        assert "in doubt" in way.reaches


def test_remote_command_words_survive(capfd: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                      ssh_log: Path) -> None:
    state = tmp_path / "state"
    started(capfd, state, make_plan(tmp_path, fake_world, LATER))
    words = ["printf", "%s|", "it's", "$(reboot)", "--prod", ""]
    assert run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--", *words)[0] == 0
    assert shlex.split(calls(ssh_log)[0]["argv"][-1]) == words
    assert ssh_entries(state)[0]["command"] == shlex.join(words)


def test_ssh_is_listed_in_help(capfd: pytest.CaptureFixture[str]) -> None:
    code, out = run(capfd, "--help")
    assert code == 0 and "  ssh " in out
    code, out = run(capfd, "ssh", "--help")
    assert code == 0 and "--twin / --prod" in out and "in doubt" in out


PACKAGES = '  packages: {proxy: "http://127.0.0.1:3142", port: 8142}\n'


def proxy_plan(tmp_path: Path, world: WorldFile) -> Path:
    path = make_plan(tmp_path, world, LATER)
    path.write_text(path.read_text().replace("  network: stg-net\n", "  network: stg-net\n" + PACKAGES))
    with world.change() as data:
        data.setdefault("expected_forwards", []).append({"listen_port": 8142, "host": "127.0.0.1", "port": 3142})
    return path


def test_twin_shell_gets_the_package_proxy_forward_and_the_hint(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                                fake_world: WorldFile, ssh_log: Path) -> None:
    state = tmp_path / "state"
    started(capfd, state, proxy_plan(tmp_path, fake_world))  # parked before the window: the twin is on staging
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost")
    assert code == 0, out
    assert ("upgrader: package proxy: export http_proxy=http://127.0.0.1:8142 HTTP_PROXY=http://127.0.0.1:8142  "
            "(forwarded to 127.0.0.1:3142 for this session)") in out
    argv = calls(ssh_log)[0]["argv"]
    assert argv[argv.index("-R") + 1] == "127.0.0.1:8142:127.0.0.1:3142" and argv[-2:] == ["--", "192.0.2.11"]
    assert ssh_entries(state)[0]["forward"] == "127.0.0.1:8142 -> 127.0.0.1:3142"
    # prod has a route of its own: no forward, no hint
    code, out = run(capfd, "--state-dir", str(state), "ssh", "mailhost", "--prod")
    assert code == 0 and "http_proxy" not in out
    assert "-R" not in calls(ssh_log)[1]["argv"]


def test_remote_forward_spec_brackets_ipv6() -> None:
    from upgrader.adapters.openssh import remote_forward_spec
    from upgrader.ports import RemoteForward

    assert remote_forward_spec(RemoteForward(3142, "::1", 3142)) == "127.0.0.1:3142:[::1]:3142"
    assert remote_forward_spec(RemoteForward(80, "cache.lan", 3128)) == "127.0.0.1:80:cache.lan:3128"
