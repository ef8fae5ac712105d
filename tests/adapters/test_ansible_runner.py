"""The ansible-core adapter's pieces without running Ansible: the recap parser, the inventory and
the SSH options it gives ansible-playbook (the plan's pinned path), the environment that keeps
Ansible out of ~/.ansible, and the typed error when ansible-playbook is missing."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from upgrader.adapters.ansible_runner import AnsibleMissing, AnsibleRunner, find_ansible_playbook, parse_recap
from upgrader.errors import InfraError
from upgrader.plan import load_plan
from upgrader.ports import HostRecap, PackageProxy, Playbook

RECAP = """\
TASK [write] *******************************************************************
changed: [mailhost]

PLAY RECAP *********************************************************************
mailhost                   : ok=2    changed=1    unreachable=0    failed=0    skipped=3    rescued=0    ignored=1   
other                      : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0   

"""


def test_the_recap_is_parsed_per_host() -> None:
    assert parse_recap(RECAP) == (HostRecap("mailhost", ok=2, changed=1, skipped=3, ignored=1),
                                  HostRecap("other", unreachable=1))


def test_no_recap_when_the_playbook_never_ran() -> None:
    assert parse_recap("ERROR! the playbook: site.yml could not be found\n") == ()


def test_the_last_recap_counts() -> None:
    assert parse_recap(RECAP + RECAP.replace("ok=2 ", "ok=7 ")) [0].ok == 7


PLAN = """\
version: 1
source: {libvirt_uri: "fake:///nowhere.json", domain: mailhost}
ssh:
  prod: {host: 192.0.2.10}
  staging:
    host: 192.0.2.26
    port: 2222
    user: admin
    key: keys/id
    known_hosts: keys/known_hosts
    proxy_command: "ssh -W %h:%p hv.example.org"
staging: {network: stg-net}
upgrade:
  - ansible: {playbook: site.yml, groups: [mail], tags: [a, b], skip_tags: [c], extra_vars: {x: 1}}
sync: {paths: [{path: /var/mail/}]}
takeover: {strategy: mac_move, production_network: prod-net}
"""


@pytest.fixture
def runner(tmp_path: Path) -> AnsibleRunner:
    (tmp_path / "plan.yml").write_text(PLAN)
    return AnsibleRunner(load_plan(tmp_path / "plan.yml"), "run-7", executable="/opt/ansible-playbook")


def test_the_inventory_is_the_twin_over_the_plans_pinned_path(tmp_path: Path, runner: AnsibleRunner) -> None:
    proxy = PackageProxy("http://127.0.0.1:3142", 3142, "10.0.0.5", 3128)
    inventory = runner.inventory("staging", tmp_path / "kh", Playbook(tmp_path / "site.yml", groups=("mail",)), proxy)
    host = inventory["all"]["hosts"]["mailhost"]
    assert inventory["all"]["children"] == {"mail": {"hosts": {"mailhost": {}}}}
    assert (host["ansible_host"], host["ansible_port"], host["ansible_user"]) == ("192.0.2.26", 2222, "admin")
    assert host["ansible_ssh_private_key_file"] == str(tmp_path / "keys" / "id")
    args = shlex.split(host["ansible_ssh_common_args"])
    options = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in options
    assert "StrictHostKeyChecking=yes" in options and "GlobalKnownHostsFile=/dev/null" in options
    assert "HostKeyAlias=upgrader-pinned" in options and "IdentitiesOnly=yes" in options
    assert "ProxyCommand=ssh -W 192.0.2.26:2222 hv.example.org" in options  # expanded as the run's paramiko does
    assert args[:2] == ["-F", "/dev/null"]
    assert args[args.index("-R") + 1] == "127.0.0.1:3142:10.0.0.5:3128" and "ExitOnForwardFailure=yes" in options
    json.dumps(inventory)  # written as JSON


def test_without_a_proxy_nothing_is_forwarded(tmp_path: Path, runner: AnsibleRunner) -> None:
    host = runner.inventory("staging", tmp_path / "kh", Playbook(tmp_path / "site.yml"), None)["all"]["hosts"]["mailhost"]
    assert "-R" not in shlex.split(host["ansible_ssh_common_args"])
    assert runner.extra_vars(Playbook(tmp_path / "site.yml", {"x": 1}), None) == {"x": 1, "upgrader_run_id": "run-7"}


def test_a_forward_upgrader_already_holds_is_not_asked_for_again(tmp_path: Path, runner: AnsibleRunner) -> None:
    proxy = PackageProxy("http://127.0.0.1:3142", 3142, "10.0.0.5", 3128, already_forwarded=True)
    host = runner.inventory("staging", tmp_path / "kh", Playbook(tmp_path / "site.yml"), proxy)["all"]["hosts"]["mailhost"]
    assert "-R" not in shlex.split(host["ansible_ssh_common_args"])  # the twin's port is taken by that forward
    assert runner.extra_vars(Playbook(tmp_path / "site.yml"), proxy)["upgrader_package_proxy"] == "http://127.0.0.1:3142"


def test_the_proxy_url_is_an_extra_var(tmp_path: Path, runner: AnsibleRunner) -> None:
    proxy = PackageProxy("http://127.0.0.1:3142", 3142, "::1", 3128)
    assert proxy.forward == "127.0.0.1:3142:[::1]:3128"
    assert runner.extra_vars(Playbook(tmp_path / "site.yml"), proxy)["upgrader_package_proxy"] == "http://127.0.0.1:3142"


def test_the_command_line(tmp_path: Path, runner: AnsibleRunner) -> None:
    book = Playbook(tmp_path / "site.yml", tags=("a", "b"), skip_tags=("c",))
    assert runner.argv("/opt/ansible-playbook", tmp_path / "inv.json", tmp_path / "ev.json", book) == [
        "/opt/ansible-playbook", "-i", str(tmp_path / "inv.json"), "-e", f"@{tmp_path / 'ev.json'}",
        "--tags", "a,b", "--skip-tags", "c", str(tmp_path / "site.yml")]


def test_the_environment_keeps_ansible_in_the_run(tmp_path: Path, runner: AnsibleRunner,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")  # an operator's setting cannot loosen the pin
    monkeypatch.setenv("ANSIBLE_RETRY_FILES_ENABLED", "True")
    env = runner.environment(tmp_path / "work", tmp_path / "cp")
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True" and env["ANSIBLE_RETRY_FILES_ENABLED"] == "False"
    assert env["ANSIBLE_HOME"] == str(tmp_path / "work" / "home")
    assert env["ANSIBLE_LOCAL_TEMP"] == str(tmp_path / "work" / "tmp")
    assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(tmp_path / "cp")
    assert (tmp_path / "work" / "home").stat().st_mode & 0o777 == 0o700


def test_a_missing_ansible_playbook_is_a_typed_error_with_the_install_hint(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AnsibleMissing) as info:
        find_ansible_playbook()
    assert isinstance(info.value, InfraError) and info.value.exit_code == 5
    assert "pip install 'upgrader[ansible]'" in (info.value.hint or "")


def test_ansible_playbook_next_to_the_python_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = tmp_path / "ansible-playbook"
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert find_ansible_playbook() == str(beside)


def test_a_playbook_still_running_from_an_earlier_attempt_is_waited_for_not_doubled(
        tmp_path: Path, runner: AnsibleRunner) -> None:
    import fcntl
    import os

    from upgrader.errors import StepFailed

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "known_hosts").write_text(
        "[192.0.2.26]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3bdPbJlrb0RXBGHBtuKzB9hbqHXsRHvkAVRw0Pp6x\n")
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    workdir = tmp_path / "ansible"
    workdir.mkdir(mode=0o700)
    held = os.open(workdir / "playbook.lock", os.O_WRONLY | os.O_CREAT, 0o600)  # as an orphaned ansible-playbook
    fcntl.flock(held, fcntl.LOCK_EX)
    lines: list[str] = []
    try:
        with pytest.raises(StepFailed, match="an earlier ansible-playbook of this run still runs"):
            runner.run_playbook("staging", Playbook(tmp_path / "site.yml"), workdir=workdir, timeout=1.5,
                                on_output=lines.append)
    finally:
        os.close(held)
    assert lines == ["upgrader: an earlier ansible-playbook of this run is still running; waiting for it"]
    assert not list(workdir.glob("playbook-*.log"))  # never started
