"""The Shell port on fabric. Host keys are pinned: only the plan's known_hosts is loaded and
unknown keys are rejected (fabric's default is AutoAddPolicy). Connection attempts are retried
with backoff (tenacity) for a bounded time; a key mismatch is never retried."""

from __future__ import annotations

import io
import logging
import os
import select
import shlex
import socket
import time
from typing import TYPE_CHECKING, Sequence

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from invoke.watchers import Responder
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from upgrader.adapters import remote_forward
from upgrader.errors import ConnectionLost, ForwardRefused, InfraError, InputError, StepFailed
from upgrader.ports import SIGNALLED, Command, OutputSink, Prompt, RemoteForward, Result, running_path

# paramiko's transport thread logs every failed handshake with a traceback (e.g. "Error reading SSH
# protocol banner" while a rebooting guest's sshd is not up yet). Without a handler, Python's
# last-resort handler prints those to the operator's terminal; the failure itself reaches us as an
# exception and is handled (retried, or reported with a hint).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from upgrader.plan import Plan, SshTarget

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# detached, so the command returns before the guest goes down (no nohup: busybox may lack it)
REBOOT = "(sleep 1; reboot) </dev/null >/dev/null 2>&1 &"
# A forward re-opened on a new connection may find its port still held by the guest-side session
# of the connection that just died (sshd has not noticed yet): asked again for this long.
FORWARD_REOPEN_WAIT = 30.0  # a forward's port may be held a while by an older session (a reconnect, a resume)


class HostKeyError(InfraError):
    default_hint = "the guest's host key must be in the plan's known_hosts; check it with ssh-keyscan through the same path"


def expand(template: str, host: str, port: int, user: str) -> str:
    """ssh_config-style %h %p %r %% in a ProxyCommand."""
    out, i = [], 0
    while i < len(template):
        if template[i] == "%" and i + 1 < len(template):
            out.append({"h": host, "p": str(port), "r": user, "%": "%"}.get(template[i + 1], template[i : i + 2]))
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


class _Lines(io.TextIOBase):
    """A stream for invoke's runners that hands complete lines to the UI, secrets masked."""

    def __init__(self, sink: OutputSink | None, secrets: Sequence[str]) -> None:
        self.sink, self.secrets, self.buffer = sink, [s for s in secrets if s], ""

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        for secret in self.secrets:
            line = line.replace(secret, "***")
        if self.sink is not None:
            self.sink(line.rstrip("\r"))

    def flush(self) -> None:
        if self.buffer:
            self._emit(self.buffer)
            self.buffer = ""


class EofProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand whose recv() reports EOF as soon as the proxy process exits
    (paramiko's own loops until its timeout when the guest is unreachable, e.g. mid-reboot)."""

    def recv(self, size: int) -> bytes:
        start = time.monotonic()
        while True:
            wait = None if self.timeout is None else self.timeout - (time.monotonic() - start)
            if wait is not None and wait <= 0:
                raise socket.timeout()
            ready, _, _ = select.select([self.process.stdout], [], [], wait)
            if ready:
                return os.read(self.process.stdout.fileno(), size)  # b"" is EOF


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, InfraError) and not isinstance(exc, (HostKeyError, ForwardRefused))


class FabricShell:
    def __init__(self, factory: "FabricShells", role: str, target: "SshTarget") -> None:
        self.factory, self.name, self.target = factory, role, target
        self.conn: Connection | None = None
        # re-opened on every new connection
        self.forwards = remote_forward.RemoteForwards(f"{target.user}@{target.host}:{target.port} ({role})")

    # ------------------------------------------------------------------ connection

    def _open(self, timeout: float) -> None:
        t, plan = self.target, self.factory.plan
        config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        kwargs: dict[str, object] = {"look_for_keys": False, "allow_agent": False,
                                     "banner_timeout": timeout, "auth_timeout": timeout}
        if t.key:
            kwargs["key_filename"] = str(plan.resolve_path(t.key))
        if t.proxy_command:
            kwargs["sock"] = EofProxyCommand(expand(t.proxy_command, t.host, t.port, t.user))
        conn = Connection(t.host, user=t.user, port=t.port, config=config, connect_kwargs=kwargs, connect_timeout=timeout)
        conn.client = paramiko.SSHClient()  # drop fabric's AutoAddPolicy and the system known_hosts
        where = f"{t.user}@{t.host}:{t.port} ({self.name})"
        if t.known_hosts:
            known = plan.resolve_path(t.known_hosts)
            try:
                conn.client.load_host_keys(str(known))
            except (OSError, paramiko.SSHException) as exc:  # missing, unreadable, or not a known_hosts file
                raise InputError(f"cannot read the known_hosts file {known} for {where}: {getattr(exc, 'strerror', None) or exc}",
                                 hint="ssh.*.known_hosts must name a readable known_hosts file (`upgrader plan check FILE`; "
                                      "docs/production.md: making known_hosts)") from exc
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(f"host key of {where} does not match the pinned key in {t.known_hosts}") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(f"host key of {where} is not in the pinned known_hosts {t.known_hosts}") from exc
            raise InfraError(f"SSH to {where}: {exc}") from exc
        except (OSError, EOFError, socket.timeout) as exc:
            raise InfraError(f"SSH to {where}: {exc or type(exc).__name__}") from exc
        transport = conn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)  # a dead peer is noticed, not hung on
        self.conn = conn

    def ensure(self, wait: float | None = None) -> Connection:
        if self.conn is not None and self.conn.is_connected:
            return self.conn
        wait = self.factory.wait if wait is None else wait
        timeout = self.target.connect_timeout.total_seconds()
        for attempt in Retrying(stop=stop_after_delay(wait), wait=wait_exponential(multiplier=0.5, max=5),
                                retry=retry_if_exception(_transient), reraise=True):
            with attempt:
                self._open(timeout)
        assert self.conn is not None
        conn = self.conn
        if self.forwards.open:  # a reconnect (reboot, lost connection) asks for them again
            try:
                self.forwards.reopen(self._transport(conn), wait=FORWARD_REOPEN_WAIT)
            except BaseException:  # refused, or the new connection died too: the next ensure starts over
                self.close()
                raise
        return conn

    def _transport(self, conn: Connection) -> paramiko.Transport:
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"connection to {self.name} closed before a remote forward could open")
        return transport

    def forward(self, forward: RemoteForward) -> None:
        self.forwards.add(self._transport(self.ensure()), forward, wait_if_taken=FORWARD_REOPEN_WAIT)

    def unforward(self, forward: RemoteForward) -> None:
        transport = self.conn.client.get_transport() if self.conn is not None and self.conn.is_connected else None
        if not self.forwards.remove(transport, forward):
            self.close()  # the sshd keeps listening (dropbear): the listener goes with this connection

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ------------------------------------------------------------------ commands

    def run(
        self,
        command: Command,
        *,
        timeout: float = 600,
        prompts: Sequence[Prompt] = (),
        env: dict[str, str] | None = None,
        on_output: OutputSink | None = None,
        mark: str | None = None,
    ) -> Result:
        line = command.line
        if mark:
            line = with_marker(line, mark)
        if env:  # inline: dropbear and many sshd configs refuse SetEnv
            line = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items()) + line
        stream = _Lines(on_output, command.secrets)
        watchers = [Responder(pattern=p.pattern, response=p.answer + "\n") for p in prompts]
        conn = self.ensure()
        try:
            result = conn.run(line, hide=False, warn=True, timeout=timeout, pty=bool(prompts), watchers=watchers,
                              out_stream=stream, err_stream=stream)
        except CommandTimedOut as exc:
            self.close()
            raise StepFailed(f"`{command.short()}` on {self.name} timed out after {timeout:.0f} s") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise ConnectionLost(f"connection to {self.name} lost while running `{command.short()}`: {exc}") from exc
        finally:
            stream.flush()
        if result.exited == -1:
            transport = conn.client.get_transport()
            if transport is not None and transport.is_active():  # sshd sent exit-signal, not exit-status
                return Result(command.masked(), SIGNALLED, _mask(result.stdout, command.secrets),
                              _mask(result.stderr, command.secrets) + "\n(killed by a signal on the guest)")
            self.close()
            raise ConnectionLost(f"connection to {self.name} died while running `{command.short()}` (no exit status)",
                             hint="the command may still be running on the guest; `upgrader resume` probes before redoing it")
        masked = _mask(result.stdout, command.secrets)
        return Result(command.masked(), int(result.exited), masked, _mask(result.stderr, command.secrets))

    def boot_id(self) -> str:
        result = self.run(Command(BOOT_ID), timeout=30)
        if not result.ok or not result.stdout.strip():
            raise InfraError(f"cannot read the boot id on {self.name}: {result.tail()}")
        return result.stdout.strip()

    def reboot(self, *, timeout: float) -> str:
        old = self.boot_id()
        self.run(Command(REBOOT), timeout=30)
        self.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.ensure(wait=max(1.0, min(30.0, deadline - time.monotonic())))
                current = self.boot_id()
            except (HostKeyError, ForwardRefused):
                raise
            except InfraError:
                self.close()
                continue
            if current != old:
                return current
            self.close()
            time.sleep(1)
        raise StepFailed(f"{self.name} did not come back with a new boot id within {timeout:.0f} s after reboot",
                         hint="`upgrader lab console NAME` (lab) or the hypervisor console shows why")


def with_marker(line: str, mark: str) -> str:
    """The command in a subshell; the same remote shell writes its pid to the running-file first
    and the done-marker right after a zero exit (see Shell.run)."""
    folder, running, done = (shlex.quote(p) for p in (mark.rsplit("/", 1)[0], running_path(mark), mark))
    return (f"mkdir -p {folder} && echo $$ > {running} || {{ echo upgrader: cannot write {running} >&2; exit 125; }}\n"
            f"( {line}\n)\nrc=$?; if [ $rc -eq 0 ]; then touch {done} || rc=$?; fi; rm -f {running}; exit $rc")


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class FabricShells:
    """Connections by role: "prod" and "staging" are the plan's two SSH targets."""

    def __init__(self, plan: "Plan", wait: float = 180.0) -> None:
        self.plan, self.wait = plan, wait
        self.targets = {"prod": plan.ssh.prod, "staging": plan.ssh.staging}
        self._shells: dict[str, FabricShell] = {}

    def connect(self, role: str, *, wait: float | None = None) -> FabricShell:
        shell = self._shells.get(role)
        if shell is None:
            shell = self._shells[role] = FabricShell(self, role, self.targets[role])
        shell.ensure(wait)
        return shell

    def reset(self) -> None:
        for shell in self._shells.values():
            shell.close()
        self._shells.clear()

