"""The PlaybookRunner port on ansible-core: `ansible-playbook` against one guest over exactly the
SSH path the run's own shells use (ssh.<role> of the plan: host, port, user, key, proxy_command),
with the host key pinned like `upgrader ssh` pins it (openssh.py): the keys the run's paramiko
would accept, looked up in the plan's known_hosts, are written to a private known_hosts under one
alias; OpenSSH runs with StrictHostKeyChecking=yes, `-F /dev/null` and nothing else to trust.

Per run, in the run's own directory (`workdir`, 0700): the inventory (one host, named after the
plan's source.domain), the extra vars, Ansible's home and local temp (ANSIBLE_HOME,
ANSIBLE_LOCAL_TEMP: nothing in ~/.ansible), the pinned known_hosts and one log per attempt. No
retry files. The SSH control sockets live in a short private temp dir (a socket path is limited to
108 bytes) and every master is told to exit when the playbook ends.

ansible-playbook writes straight into the attempt's log; a thread follows the file and feeds
`on_output`. So a playbook whose orchestrator was killed keeps running without blocking on a full
pipe, and keeps the run's `playbook.lock` (an flock it inherited): the next attempt waits for it
instead of starting the playbook a second time alongside."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upgrader.adapters.fabric_shell import HostKeyError
from upgrader.adapters.openssh import ALIVE_INTERVAL, KEY_ALIAS, SSH, _token_safe, pinned_keys, proxy_argument
from upgrader.errors import ConnectionLost, InfraError, InputError, StepFailed
from upgrader.plan_ansible import PROXY_VAR
from upgrader.ports import HostRecap, OutputSink, PackageProxy, Playbook, PlaybookResult, Result

if TYPE_CHECKING:
    from upgrader.plan import Plan

__all__ = ["AnsibleMissing", "AnsibleRunner", "find_ansible_playbook", "parse_recap", "ssh_options"]

ANSIBLE_PLAYBOOK = "ansible-playbook"
INSTALL_HINT = "install ansible-core on the controller: `pip install 'upgrader[ansible]'` (ansible-core 2.17 to 2.19)"
TAIL_LINES = 400  # kept in memory for the Result; the whole output is in the attempt's log
HOST_KEY_REFUSED = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")  # OpenSSH's words
_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


class AnsibleMissing(InfraError):
    """ansible-playbook is not installed next to upgrader's Python nor on PATH."""

    default_hint = INSTALL_HINT


def find_ansible_playbook() -> str:
    """ansible-playbook of upgrader's own environment (next to sys.executable), else on PATH."""
    beside = Path(sys.executable).parent / ANSIBLE_PLAYBOOK
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(ANSIBLE_PLAYBOOK)
    if found is None:
        raise AnsibleMissing(f"`{ANSIBLE_PLAYBOOK}` is neither next to {sys.executable} nor on PATH: "
                             "an `ansible:` upgrade step needs ansible-core")
    return found


def parse_recap(text: str) -> tuple[HostRecap, ...]:
    """The host lines after the last PLAY RECAP of the default callback's output."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return ()
    recap = []
    fields = set(HostRecap.__dataclass_fields__) - {"host"}
    for line in lines[starts[-1] + 1:]:
        m = _RECAP_LINE.match(line.strip())
        if m is None:
            if recap or line.strip():
                break
            continue
        counts = {k: int(v) for k, v in (pair.split("=") for pair in m.group("counts").split()) if k in fields}
        recap.append(HostRecap(m.group("host"), **counts))
    return tuple(recap)


def ssh_options(known_hosts: Path, key: Path | None, proxy_command: str | None, host: str, port: int, user: str,
                proxy: PackageProxy | None) -> list[str]:
    """OpenSSH arguments for ansible_ssh_common_args: the run's pinned path (openssh.openssh_argv's
    options), and the package proxy's remote forward when there is one."""
    args = ["-F", "/dev/null",
            "-o", f"UserKnownHostsFile={_token_safe(known_hosts)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={KEY_ALIAS}",
            "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", "ForwardAgent=no", "-o", "ForwardX11=no",
            "-o", "BatchMode=yes"]
    if key is not None:
        args += ["-o", "IdentitiesOnly=yes"]
    if proxy_command:
        args += ["-o", "ProxyCommand=" + proxy_argument(proxy_command, host, port, user)]
    if proxy is not None and not proxy.already_forwarded:
        args += ["-o", "ExitOnForwardFailure=yes", "-R", proxy.forward]
    return args


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise InfraError(f"{path} is not a directory")
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class _Follower(threading.Thread):
    """Follows a log file that another process writes, line by line, until told to stop (it then
    reads what is left)."""

    def __init__(self, path: Path, offset: int, on_output: OutputSink | None) -> None:
        super().__init__(daemon=True)
        self.path, self.offset, self.on_output = path, offset, on_output
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.stopping = threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            pending = b""
            while True:
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._line(line.decode(errors="replace"))
                elif self.stopping.is_set():
                    if pending:
                        self._line(pending.decode(errors="replace"))
                    return
                else:
                    time.sleep(0.05)

    def _line(self, line: str) -> None:
        self.tail.append(line)
        if self.on_output is not None:
            self.on_output(line)


class AnsibleRunner:
    def __init__(self, plan: "Plan", run_id: str, *, executable: str | None = None) -> None:
        self.plan, self.run_id, self.executable = plan, run_id, executable

    def check(self) -> str:
        return f"{ANSIBLE_PLAYBOOK} at {self.executable or find_ansible_playbook()}"

    # ---- what is run ---------------------------------------------------------------------
    def inventory(self, role: str, known_hosts: Path, playbook: Playbook, proxy: PackageProxy | None) -> dict[str, Any]:
        t = getattr(self.plan.ssh, role)
        key = self.plan.resolve_path(t.key) if t.key else None
        host_vars: dict[str, Any] = {
            "ansible_connection": "ssh",
            "ansible_host": t.host,
            "ansible_port": t.port,
            "ansible_user": t.user,
            "ansible_ssh_common_args": shlex.join(ssh_options(known_hosts, key, t.proxy_command, t.host, t.port,
                                                              t.user, proxy)),
            "ansible_ssh_timeout": max(1, round(t.connect_timeout.total_seconds())),
            "ansible_python_interpreter": "auto_silent",
        }
        if key is not None:
            host_vars["ansible_ssh_private_key_file"] = str(key)
        name = self.plan.source.domain
        return {"all": {"hosts": {name: host_vars},
                        "children": {group: {"hosts": {name: {}}} for group in playbook.groups}}}

    def extra_vars(self, playbook: Playbook, proxy: PackageProxy | None) -> dict[str, Any]:
        own: dict[str, Any] = {"upgrader_run_id": self.run_id}
        if proxy is not None:
            own[PROXY_VAR] = proxy.twin_url
        return {**playbook.extra_vars, **own}

    def argv(self, executable: str, inventory: Path, extra_vars: Path, playbook: Playbook) -> list[str]:
        argv = [executable, "-i", str(inventory), "-e", f"@{extra_vars}"]
        if playbook.tags:
            argv += ["--tags", ",".join(playbook.tags)]
        if playbook.skip_tags:
            argv += ["--skip-tags", ",".join(playbook.skip_tags)]
        return [*argv, str(playbook.path)]

    def environment(self, workdir: Path, control_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        home = Path("~").expanduser()
        env.update({
            "ANSIBLE_HOME": str(_private_dir(workdir / "home")),
            "ANSIBLE_LOCAL_TEMP": str(_private_dir(workdir / "tmp")),
            "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(_private_dir(workdir / "home" / "pc")),
            # read from where Ansible looks by default, written nowhere else
            "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH",
                                                       f"{home}/.ansible/collections:/usr/share/ansible/collections"),
            "ANSIBLE_ROLES_PATH": os.environ.get("ANSIBLE_ROLES_PATH",
                                                 f"{home}/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_SSH_RETRIES": "0",
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            "ANSIBLE_SSH_EXECUTABLE": SSH,
            "ANSIBLE_LOG_PATH": "/dev/null",
            "PYTHONUNBUFFERED": "1",
            "SHELL": "/bin/sh",  # OpenSSH runs the ProxyCommand with it (quoted for sh, openssh.py)
        })
        return env

    # ---- running it ----------------------------------------------------------------------
    def run_playbook(self, role: str, playbook: Playbook, *, workdir: Path, timeout: float,
                     proxy: PackageProxy | None = None, on_output: OutputSink | None = None) -> PlaybookResult:
        executable = self.executable or find_ansible_playbook()
        t = getattr(self.plan.ssh, role)
        if t.known_hosts is None:
            raise InputError(f"the plan has no known_hosts for ssh.{role}: an `ansible:` step accepts no host key "
                             "without one", hint=f"add `known_hosts: FILE` with the guest's host key to ssh.{role}")
        if not playbook.path.is_file():
            raise InputError(f"the playbook {playbook.path} does not exist",
                             hint="`upgrader plan check FILE` lists the plan's missing files")
        host_keys = pinned_keys(self.plan.resolve_path(t.known_hosts), t.host, t.port)
        workdir = _private_dir(workdir)
        lock = os.open(workdir / "playbook.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            self._wait_for_lock(lock, timeout, on_output)
            known_hosts = workdir / "known_hosts"
            _write_private(known_hosts, "".join(f"{KEY_ALIAS} {line}\n" for line in host_keys))
            inventory, extra_vars = workdir / "inventory.json", workdir / "extra_vars.json"
            _write_private(inventory, json.dumps(self.inventory(role, known_hosts, playbook, proxy), indent=1))
            _write_private(extra_vars, json.dumps(self.extra_vars(playbook, proxy), indent=1))
            argv = self.argv(executable, inventory, extra_vars, playbook)
            control_dir = Path(tempfile.mkdtemp(prefix="upgrader-cp-"))
            ended = False
            try:
                result = self._run(argv, workdir, control_dir, playbook, lock, timeout, on_output)
                ended = True
            except BaseException as exc:  # the timeout (_run stopped it), or it could not start
                ended = not isinstance(exc, KeyboardInterrupt)  # Ctrl-C, SIGTERM (Terminated): see below
                raise
            finally:
                # Interrupted (Ctrl-C, SIGTERM) while it runs, ansible-playbook is left to finish with
                # its connections (the next attempt waits for it on the lock); else they end with it.
                if ended:
                    _close_masters(control_dir)
                    shutil.rmtree(control_dir, ignore_errors=True)
        finally:
            os.close(lock)
        return self._checked(role, result)

    def _checked(self, role: str, result: PlaybookResult) -> PlaybookResult:
        """A refused host key and an unreachable guest are errors of their own; anything else is
        the caller's to judge (`PlaybookResult.ok`)."""
        where, output = f"ssh.{role}", result.result.stdout
        if not result.result.ok and any(marker in output for marker in HOST_KEY_REFUSED):
            raise HostKeyError(f"ansible-playbook: the host key of {where} ({getattr(self.plan.ssh, role).host}) is not "
                               f"the pinned one in {where}.known_hosts; refused:\n{result.result.tail()}")
        if any(h.unreachable for h in result.recap):
            raise ConnectionLost(f"ansible-playbook: {where} ({getattr(self.plan.ssh, role).host}) became unreachable:\n"
                                 f"{result.result.tail()}")
        return result

    def _wait_for_lock(self, lock: int, timeout: float, on_output: OutputSink | None) -> None:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not told and on_output is not None:
                    on_output("upgrader: an earlier ansible-playbook of this run is still running; waiting for it")
                    told = True
                if time.monotonic() > deadline:
                    raise StepFailed(f"an earlier ansible-playbook of this run still runs after {timeout:.0f} s",
                                     hint="it holds playbook.lock in the run's ansible directory; wait for it or "
                                          "end it (its pid: `fuser` on that file)") from None
                time.sleep(1)

    def _run(self, argv: list[str], workdir: Path, control_dir: Path, playbook: Playbook, lock: int,
             timeout: float, on_output: OutputSink | None) -> PlaybookResult:
        attempt = 1 + sum(1 for _ in workdir.glob("playbook-*.log"))
        log_path = workdir / f"playbook-{attempt}.log"
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        command = shlex.join(argv)
        try:
            follower = _Follower(log_path, 0, on_output)
            proc = subprocess.Popen(argv, cwd=playbook.path.parent, env=self.environment(workdir, control_dir),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(lock,))
        finally:
            os.close(log)
        follower.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            follower.stopping.set()
            follower.join()
            raise StepFailed(f"ansible-playbook {playbook.path.name} did not finish within {timeout:.0f} s; stopped",
                             hint="raise the step's `timeout:` if the playbook needs longer",
                             result=Result(command, proc.returncode if proc.returncode is not None else -1,
                                           "\n".join(follower.tail))) from None
        follower.stopping.set()
        follower.join()
        output = "\n".join(follower.tail)
        return PlaybookResult(Result(command, rc, output), parse_recap(output))


def _stop(proc: subprocess.Popen[Any]) -> None:
    """ansible-playbook's whole session (its workers and their ssh): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _close_masters(control_dir: Path) -> None:
    """Tell every SSH master Ansible left (ControlPersist) to exit now."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run([SSH, "-F", "/dev/null", "-o", f"ControlPath={_token_safe(sock)}", "-O", "exit", "upgrader"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
