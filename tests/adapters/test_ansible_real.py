"""The `ansible:` step's runner for real: ansible-core's ansible-playbook against a real OpenSSH
sshd on 127.0.0.1 (tests/adapters/sshd_servers.py: its own mount namespace, /root a temp dir),
through the plan's pinned path - its key, its known_hosts (StrictHostKeyChecking=yes), its
ProxyCommand. The target's Python is this machine's /usr/bin/python3. Needs root, unshare,
OpenSSH's sshd and ansible-core (`pip install 'upgrader[ansible]'`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from upgrader.adapters.ansible_runner import AnsibleMissing, AnsibleRunner, find_ansible_playbook
from upgrader.adapters.fabric_shell import HostKeyError
from upgrader.plan import Plan, load_plan
from upgrader.ports import HostRecap, PackageProxy, Playbook, PlaybookResult
from tests.adapters.sshd_servers import Server, free_port, http_stand_in, why_not

PLAN = """\
version: 1
source: {{libvirt_uri: "fake:///nowhere.json", domain: mailhost}}
ssh:
  prod: {{host: 192.0.2.10}}
  staging:
    host: 127.0.0.1
    port: {port}
    key: {key}
    known_hosts: {known_hosts}
{proxy_command}
staging: {{network: stg-net}}
upgrade:
  - ansible: {{playbook: site.yml}}
sync: {{paths: [{{path: /var/mail/}}]}}
takeover: {{strategy: mac_move, production_network: prod-net}}
"""

WRITE = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: write the release file
      ansible.builtin.copy:
        dest: /root/release
        content: "13\\n"
        mode: "0644"
    - name: say where we are
      ansible.builtin.debug: {msg: "run {{ upgrader_run_id }} as {{ ansible_user }}"}
"""

FAIL = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: configure dovecot
      ansible.builtin.shell: 'echo "doveconf: Fatal: disable_plaintext_auth is no longer supported" >&2; exit 100'
    - name: never reached
      ansible.builtin.copy: {dest: /root/after, content: "x"}
"""

FETCH = """\
- hosts: mailservers
  gather_facts: false
  tasks:
    - name: fetch through the package proxy
      ansible.builtin.command: >-
        /usr/bin/python3 -c "import urllib.request, sys;
        sys.stdout.write(urllib.request.urlopen(sys.argv[1] + '/debian/dists').read().decode())"
        {{ upgrader_package_proxy }}
      register: fetched
      changed_when: false
    - ansible.builtin.copy: {dest: /root/fetched, content: "{{ fetched.stdout }}"}
"""


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("orchestrator") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def twin(tmp_path: Path, client_key: Path) -> Iterator[Server]:
    reason = why_not("openssh")
    if reason:
        pytest.skip(f"openssh: {reason}")
    try:
        find_ansible_playbook()
    except AnsibleMissing:
        pytest.skip("ansible-core is not installed (pip install 'upgrader[ansible]')")
    server = Server("openssh", tmp_path / "twin", client_key).start()
    try:
        yield server
    finally:
        server.stop()


def plan_for(tmp_path: Path, server: Server, playbook: str, *, known_hosts: Path | None = None,
             proxy_command: str | None = None) -> Plan:
    (tmp_path / "site.yml").write_text(playbook)
    path = tmp_path / "plan.yml"
    path.write_text(PLAN.format(port=server.port, key=server.client_key,
                                known_hosts=known_hosts or server.base / "known_hosts",
                                proxy_command=f'    proxy_command: "{proxy_command}"' if proxy_command else ""))
    return load_plan(path)


def run(plan: Plan, tmp_path: Path, *, proxy: PackageProxy | None = None, groups: tuple[str, ...] = (),
        lines: list[str] | None = None) -> PlaybookResult:
    runner = AnsibleRunner(plan, "run-1")
    return runner.run_playbook("staging", Playbook(plan.resolve_path("site.yml"), groups=groups),
                               workdir=tmp_path / "state" / "ansible", timeout=240,
                               proxy=proxy, on_output=(lines.append if lines is not None else None))


def test_a_playbook_changes_the_twin_once_and_a_second_run_changes_nothing(
        tmp_path: Path, twin: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "operator-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    plan = plan_for(tmp_path, twin, WRITE)
    lines: list[str] = []
    first = run(plan, tmp_path, lines=lines)
    assert first.ok, first.result.tail(40)
    assert (twin.home / "release").read_text() == "13\n"
    assert first.recap == (HostRecap("mailhost", ok=2, changed=1),)
    assert any(line.startswith("PLAY RECAP") for line in lines)  # streamed as it ran
    assert any("run run-1 as root" in line for line in lines)  # upgrader's own extra var
    second = run(plan, tmp_path)
    assert second.ok and second.changed == 0
    assert second.recap == (HostRecap("mailhost", ok=2, changed=0),)
    # nothing in the operator's home, no retry file beside the playbook; Ansible's state is the run's
    assert not (home / ".ansible").exists()
    assert not list(tmp_path.glob("*.retry"))
    workdir = tmp_path / "state" / "ansible"
    assert sorted(p.name for p in workdir.glob("playbook-*.log")) == ["playbook-1.log", "playbook-2.log"]
    assert (workdir / "playbook-1.log").stat().st_mode & 0o777 == 0o600
    assert workdir.stat().st_mode & 0o777 == 0o700


def test_a_failing_task_is_a_failed_result_with_the_output_tail(tmp_path: Path, twin: Server) -> None:
    result = run(plan_for(tmp_path, twin, FAIL), tmp_path)
    assert not result.ok
    assert result.result.rc == 2
    assert result.recap == (HostRecap("mailhost", ok=0, failed=1),)
    assert "disable_plaintext_auth is no longer supported" in result.result.tail(20)
    assert "ansible-playbook" in result.result.command and "site.yml" in result.result.command
    assert not (twin.home / "after").exists()


def test_a_host_key_other_than_the_pinned_one_is_refused(tmp_path: Path, twin: Server) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{twin.port} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    with pytest.raises(HostKeyError, match="not the pinned one"):
        run(plan_for(tmp_path, twin, WRITE, known_hosts=wrong), tmp_path)
    assert not (twin.home / "release").exists()


def test_the_plans_proxy_command_is_the_path(tmp_path: Path, twin: Server) -> None:
    relay = tmp_path / "relay.py"
    seen = tmp_path / "relayed"
    relay.write_text(
        "import socket, sys, threading, os\n"
        f"open({str(seen)!r}, 'a').write(sys.argv[1] + ':' + sys.argv[2] + '\\n')\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "def up():\n"
        "    while (d := os.read(0, 65536)):\n"
        "        s.sendall(d)\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while (d := s.recv(65536)):\n"
        "    os.write(1, d)\n")
    plan = plan_for(tmp_path, twin, WRITE, proxy_command=f"{sys.executable} {relay} %h %p")
    result = run(plan, tmp_path)
    assert result.ok, result.result.tail(40)
    assert (twin.home / "release").read_text() == "13\n"
    assert seen.read_text().splitlines()[0] == f"127.0.0.1:{twin.port}"


def test_the_package_proxy_is_forwarded_to_the_twin_and_named_in_an_extra_var(tmp_path: Path, twin: Server) -> None:
    with http_stand_in(lambda path: f"mirror saw {path}") as mirror:
        listen = free_port()  # nothing listens there but the forward over the playbook's SSH connection
        proxy = PackageProxy(twin_url=f"http://127.0.0.1:{listen}", listen_port=listen,
                             host="127.0.0.1", port=mirror)
        result = run(plan_for(tmp_path, twin, FETCH), tmp_path, proxy=proxy, groups=("mailservers",))
    assert result.ok, result.result.tail(40)
    assert (twin.home / "fetched").read_text() == "mirror saw /debian/dists"


def test_a_playbook_past_its_timeout_is_stopped_and_fails_the_step(tmp_path: Path, twin: Server) -> None:
    from upgrader.errors import StepFailed

    plan = plan_for(tmp_path, twin, "- hosts: all\n  gather_facts: false\n  tasks:\n"
                                    "    - ansible.builtin.shell: echo $$ > /root/sleeper; exec sleep 120\n")
    runner = AnsibleRunner(plan, "run-1")
    try:
        with pytest.raises(StepFailed, match="did not finish within 8 s; stopped") as info:
            runner.run_playbook("staging", Playbook(plan.resolve_path("site.yml")),
                                workdir=tmp_path / "state" / "ansible", timeout=8)
    finally:  # the task itself goes on on the guest (no pty, no SIGHUP), as a `run:` step's command would
        sleeper = twin.home / "sleeper"
        if sleeper.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(sleeper.read_text()), signal.SIGKILL)
    assert info.value.result is not None and "TASK [ansible.builtin.shell]" in info.value.result.stdout
