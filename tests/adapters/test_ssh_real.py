"""`upgrader ssh` with the real OpenSSH client against real sshd's on 127.0.0.1 (the twin: OpenSSH's
sshd; prod: dropbear, the lab guest's), through the plan's proxy command, key and pinned
known_hosts, run as a subprocess like an operator runs it. The run itself is on the fakes, parked
before its window (the twin is on the staging path then)."""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrader import app
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

from tests.adapters.sshd_servers import Server, why_not

REPO = Path(__file__).resolve().parents[2]
LATER = "window: {start: 2099-01-05T02:00:00, duration: 1h, timezone: UTC}\n"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("operator") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def guests(tmp_path: Path, client_key: Path) -> Iterator[tuple[Server, Server]]:
    """(twin, prod): OpenSSH's sshd and dropbear, each with its own /mnt."""
    for kind in ("openssh", "dropbear"):
        reason = why_not(kind)
        if reason:
            pytest.skip(f"{kind}: {reason}")
    started: list[Server] = []
    try:
        started.append(Server("openssh", tmp_path / "twin", client_key).start())
        started.append(Server("dropbear", tmp_path / "prod", client_key).start())
        started[0].data.joinpath("who").write_text("the twin\n")
        started[1].data.joinpath("who").write_text("prod\n")
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def parked(tmp_path: Path, fake_world: WorldFile, guests: tuple[Server, Server], client_key: Path) -> Path:
    """A run parked before its window whose plan points ssh.staging at the twin's sshd (through a
    proxy command that logs each use) and ssh.prod at the other; returns the state dir."""
    return park(tmp_path, fake_world, guests, client_key)


def park(tmp_path: Path, fake_world: WorldFile, guests: tuple[Server, Server], client_key: Path, staging: str = "") -> Path:
    twin, prod = guests
    proxy = tmp_path / "proxy.sh"
    proxy.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/proxy.log\ntrap "" INT\n'  # Ctrl-C: for ssh to handle
                     f"PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -m upgrader.lab.proxy \"$@\"\n")
    proxy.chmod(0o755)
    section = (f"ssh:\n"
               f"  staging: {{host: 127.0.0.1, port: {twin.port}, key: {client_key}, known_hosts: {twin.base}/known_hosts,"
               f" proxy_command: \"{proxy} %h %p\"}}\n"
               f"  prod: {{host: 127.0.0.1, port: {prod.port}, key: {client_key}, known_hosts: {prod.base}/known_hosts}}\n")
    text = FAKE_PLAN.format(world=fake_world.path, keep="1h")
    start, end = text.index("ssh:\n"), text.index("staging:\n  network")
    plan = tmp_path / "real-ssh.yml"
    plan.write_text((text[:start] + section + text[end:] + LATER).replace("  network: stg-net\n", "  network: stg-net\n" + staging))
    state = tmp_path / "state"
    record = app.start(app.Context(RunStore(state)), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked
    return state


def upgrader(state: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "ssh", "mailhost", *args], check=False,
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def journaled(state: Path) -> list[tuple[str, object]]:
    store = RunStore(state)
    entries = store.journal("mailhost", store.runs("mailhost")[-1])
    return [(e["kind"], e.get("command") if e["kind"] == "ssh" else e.get("rc")) for e in entries
            if e["kind"] in ("ssh", "ssh_end")]


def test_twin_command_exit_code_output_and_proxy(parked: Path, tmp_path: Path, guests: tuple[Server, Server]) -> None:
    twin, _ = guests
    done = upgrader(parked, "--twin", "--", "sh", "-c", "exit 7")
    assert done.returncode == 7, done.stderr
    done = upgrader(parked, "--", "cat", "/mnt/who")
    assert done.returncode == 0 and done.stdout == "the twin\n", done.stderr
    assert (tmp_path / "proxy.log").read_text() == f"127.0.0.1 {twin.port}\n" * 2  # both through the plan's proxy
    assert journaled(parked) == [("ssh", "sh -c 'exit 7'"), ("ssh_end", 7), ("ssh", "cat /mnt/who"), ("ssh_end", 0)]


def test_prod_and_quoting(parked: Path, tmp_path: Path) -> None:
    done = upgrader(parked, "--prod", "--", "printf", "%s|", "it's", "$(id -u)", "a  b")
    assert done.returncode == 0 and done.stdout == "it's|$(id -u)|a  b|", done.stderr
    done = upgrader(parked, "--prod", "--", "cat", "/mnt/who")
    assert done.stdout == "prod\n" and not (tmp_path / "proxy.log").exists()  # prod has no proxy in this plan


def test_shell_without_terminal_reads_its_script_from_stdin(parked: Path) -> None:
    done = upgrader(parked, stdin="cat /mnt/who\nexit 3\n")
    assert done.returncode == 3 and done.stdout == "the twin\n", done.stderr
    assert "the twin mailhost-twin on the staging segment" in done.stderr
    assert "Pseudo-terminal" not in done.stderr
    assert journaled(parked) == [("ssh", None), ("ssh_end", 3)]


def test_a_host_key_the_run_would_refuse_is_refused(parked: Path, guests: tuple[Server, Server]) -> None:
    twin, prod = guests
    wrong = (prod.base / "known_hosts").read_text().split(" ", 1)[1]  # prod's key, pinned for the twin's name
    (twin.base / "known_hosts").write_text(f"[127.0.0.1]:{twin.port} {wrong}")
    done = upgrader(parked, "--", "true")
    assert done.returncode == 255 and "Host key verification failed" in done.stderr, done.stderr
    assert journaled(parked) == [("ssh", "true"), ("ssh_end", 255)]
    (twin.base / "known_hosts").write_text(f"* {wrong}")  # a wildcard: paramiko (the run) accepts no key by it
    done = upgrader(parked, "--", "true")
    assert done.returncode == 5 and "no host key for [127.0.0.1]" in done.stderr and "Traceback" not in done.stderr


def test_interactive_shell_on_a_terminal_gets_a_pty(parked: Path) -> None:
    """On a terminal: ssh -t, the remote shell sees a tty; the session's exit code is returned."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(parked), "ssh", "mailhost"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "dumb"})
    os.close(slave)
    seen = b""
    try:
        os.write(master, b"tty >/dev/null && echo ON-A-PTY; cat /mnt/who; exit 4\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the last writer closed the pty
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert rc == 4 and "ON-A-PTY" in text and "the twin\r\n" in text, text
    assert journaled(parked) == [("ssh", None), ("ssh_end", 4)]


def test_ctrl_c_is_left_to_ssh_and_the_end_still_journaled(parked: Path, guests: tuple[Server, Server]) -> None:
    """Ctrl-C reaches the whole foreground group: ssh ends the command, upgrader itself is not
    interrupted (no `resume` hint) and journals the end with ssh's exit code."""
    twin, _ = guests
    proc = subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(parked), "ssh", "mailhost",
                             "--", "sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not remote_sleep(twin):  # the command runs on the twin
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 255 and "interrupted" not in err and "Traceback" not in err, err
    assert journaled(parked) == [("ssh", "sleep 30"), ("ssh_end", 255)]


def remote_sleep(server: Server) -> bool:
    """A `sleep 30` below the server's process (its sshd's session child)."""
    parents: dict[int, int] = {}
    sleeping: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat_fields[1])
        if cmdline == b"sleep\x0030\x00":
            sleeping.append(int(entry.name))
    assert server.proc is not None
    for pid in sleeping:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == server.proc.pid:
                return True
    return False


def test_twin_shell_reaches_the_package_proxy_through_its_forward(tmp_path: Path, fake_world: WorldFile,
                                                                   guests: tuple[Server, Server], client_key: Path) -> None:
    """plan `staging.packages`: `upgrader ssh --twin` adds `-R 127.0.0.1:P:HOST:PORT`; the twin's
    127.0.0.1:P reaches the proxy (here a tiny HTTP server of the test on this machine's loopback)."""
    from tests.adapters.sshd_servers import free_port, http_stand_in

    with http_stand_in(lambda path: f"proxy saw {path}\n") as proxy_port:
        port = free_port()
        with fake_world.change() as world:  # the run's upgrade opens the same forward on the (fake) twin
            world["expected_forwards"] = [{"listen_port": port, "host": "127.0.0.1", "port": proxy_port}]
        state = park(tmp_path, fake_world, guests, client_key,
                     f"  packages: {{proxy: \"http://127.0.0.1:{proxy_port}\", port: {port}}}\n")
        done = upgrader(state, "--twin", "--", "curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/marker")
        assert done.returncode == 0 and done.stdout == "proxy saw /marker\n", done.stderr
        done = upgrader(state, "--prod", "--", "curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/marker")
        assert done.returncode != 0 and "proxy saw" not in done.stdout  # prod's path opens no forward
