"""SSH into lab guests through an access namespace, with pinned host keys (RejectPolicy)."""

from __future__ import annotations

import logging
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from upgrader.adapters.fabric_shell import EofProxyCommand
from upgrader.lab import config as C
from upgrader.lab.errors import LabError, LabTimeout
from upgrader.lab.proc import CommandFailed, ExecResult


# paramiko logs transport errors (with tracebacks) from its thread; without a handler Python's
# last-resort handler prints them. A NullHandler keeps them off stderr unless the app configures
# logging (the library-recommended way; records still propagate to the root logger).
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def proxy_command(segment: C.Segment) -> str:
    """ssh_config-style ProxyCommand (with %h %p) for a segment's access namespace: busybox nc
    run inside it (no Python start-up, no dependency on this venv). `python -m
    upgrader.lab.proxy %h %p` does the same job (see python_proxy_command)."""
    ns = C.SEGMENTS[segment].access_ns
    busybox = shutil.which("busybox") or "/bin/busybox"
    return f"ip netns exec {ns} {busybox} nc %h %p"


def python_proxy_command(segment: C.Segment) -> str:
    ns = C.SEGMENTS[segment].access_ns
    return f"ip netns exec {ns} {shlex.quote(sys.executable)} -m upgrader.lab.proxy %h %p"


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to reach a guest on one segment (what a plan's ssh section holds)."""

    segment: C.Segment
    host: str
    port: int
    user: str
    key_path: Path
    known_hosts: Path

    @property
    def proxy_command(self) -> str:
        return proxy_command(self.segment)

    @property
    def proxy_command_expanded(self) -> str:
        """For paramiko.ProxyCommand, which does not expand %h / %p itself."""
        return self.proxy_command.replace("%h", self.host).replace("%p", str(self.port))

    def as_dict(self) -> dict[str, object]:
        return {"segment": str(self.segment), "host": self.host, "port": self.port, "user": self.user,
                "key": str(self.key_path), "known_hosts": str(self.known_hosts),
                "proxy_command": self.proxy_command}

    def connect(self, timeout: float = 30.0) -> paramiko.SSHClient:
        """A connected paramiko client; the host key must match the lab's known_hosts."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = EofProxyCommand(self.proxy_command_expanded)
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=str(self.key_path),
                           sock=sock, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           look_for_keys=False, allow_agent=False)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            raise LabError(f"SSH to {self.user}@{self.host} via {self.segment} failed: {exc}",
                           hint="`upgrader lab status`; `upgrader lab console NAME` shows the guest's console") from exc
        return client

    def fabric_connection(self):  # type: ignore[no-untyped-def]
        """A fabric Connection with pinned host keys (fabric's default policy is AutoAdd)."""
        from fabric import Config, Connection

        config = Config(overrides={"load_ssh_configs": False})
        conn = Connection(self.host, user=self.user, port=self.port, config=config,
                          gateway=self.proxy_command,
                          connect_kwargs={"key_filename": str(self.key_path), "look_for_keys": False,
                                          "allow_agent": False})
        conn.client.load_host_keys(str(self.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    def openssh_argv(self, command: list[str] | None = None, tty: bool = False) -> list[str]:
        """argv for the OpenSSH client (interactive `lab ssh`)."""
        argv = ["ssh", "-i", str(self.key_path), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", f"ProxyCommand={self.proxy_command}", "-p", str(self.port)]
        if tty:
            argv.append("-t")
        argv += ["--", f"{self.user}@{self.host}"]  # OpenSSH parses options after the host too
        if command:
            argv.append(shlex.join(command) if len(command) > 1 else command[0])
        return argv


def exec_command(client: paramiko.SSHClient, command: str, *, timeout: float = 60.0,
                 input: str | None = None) -> ExecResult:
    """Run command over an open connection; collects stdout/stderr and the exit code."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise LabError("SSH connection is closed")
    try:
        chan = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise LabError(f"`{command}`: cannot open an SSH session: {exc or type(exc).__name__}") from exc
    chan.settimeout(timeout)
    try:
        chan.exec_command(command)
        if input is not None:
            chan.sendall(input.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            elif time.monotonic() > deadline:
                raise LabTimeout(f"`{command}` on the guest did not finish within {timeout:.0f} s")
            else:
                time.sleep(0.01)
        # drain what arrived with the exit status
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        rc = chan.recv_exit_status()
    except socket.timeout as exc:
        raise LabTimeout(f"`{command}` on the guest timed out after {timeout:.0f} s") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise LabError(f"`{command}`: the SSH connection broke: {exc or type(exc).__name__}") from exc
    finally:
        chan.close()
    return ExecResult(command=command, rc=rc, stdout=out.decode(errors="replace"),
                      stderr=err.decode(errors="replace"))


def run_on(target: SSHTarget, command: str, *, timeout: float = 60.0, check: bool = True,
           input: str | None = None) -> ExecResult:
    client = target.connect(timeout=min(timeout, 30.0))
    try:
        result = exec_command(client, command, timeout=timeout, input=input)
    finally:
        client.close()
    if check and not result.ok:
        raise CommandFailed(result)
    return result
