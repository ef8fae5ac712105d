"""The OpenSSH client (`ssh`) on exactly the path the run's fabric shells use (fabric_shell.py),
for `upgrader ssh`: an operator's interactive shell or one command on a guest.

The host key check is the run's, not OpenSSH's: the run's paramiko looks the host up in the plan's
known_hosts under `host` (port 22) or `[host]:port` by exact or hashed name and accepts only the
keys found there. `pinned_keys` does that same lookup with paramiko; the keys found are written to
a private temporary known_hosts under one alias (`HostKeyAlias`), so OpenSSH accepts exactly those
keys and nothing a wildcard pattern, a @cert-authority line or the user's own files would add.
`-F /dev/null` keeps ~/.ssh/config and /etc/ssh/ssh_config out (the run loads no ssh config
either: no ControlMaster to reuse, no other ProxyJump). The ProxyCommand is the plan's, expanded
as the run expands it (`expand`) and re-quoted for the shell OpenSSH runs it with, so it gets the
argv paramiko would exec."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import paramiko

from upgrader.adapters.fabric_shell import HostKeyError, expand
from upgrader.errors import InfraError, InputError
from upgrader.ports import RemoteForward

SSH = "ssh"
KEY_ALIAS = "upgrader-pinned"  # the only name in the temporary known_hosts
# Keepalive like the run's transport.set_keepalive(5); OpenSSH also gives up after 3 unanswered.
ALIVE_INTERVAL = 5


@dataclass(frozen=True)
class SshCall:
    """One use of the OpenSSH client: where (the plan's target, paths resolved), with which
    pinned host keys, and what (`command` None: an interactive shell)."""

    host: str
    port: int
    user: str
    key: Path | None
    proxy_command: str | None  # the plan's template, %h %p %r not yet expanded
    connect_timeout: float
    host_keys: tuple[str, ...]  # "type base64" lines, from pinned_keys
    command: tuple[str, ...] | None = None
    tty: bool = False  # a shell on a terminal: ask for a pty (never for a command)
    forward: RemoteForward | None = None  # a remote forward (-R) on the guest's 127.0.0.1 (the package proxy)

    @property
    def remote_command(self) -> str | None:
        """The one string the remote login shell gets: every argument quoted."""
        return None if self.command is None else shlex.join(self.command)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def lookup_name(host: str, port: int) -> str:
    """The name paramiko's SSHClient looks a host key up by (and OpenSSH too, without an alias)."""
    return host if port == 22 else f"[{host}]:{port}"


def pinned_keys(known_hosts: Path, host: str, port: int) -> tuple[str, ...]:
    """The keys the run would accept for host:port: paramiko's own lookup in the pinned file."""
    try:
        keys = paramiko.HostKeys(str(known_hosts)).lookup(lookup_name(host, port))
    except FileNotFoundError:
        raise InputError(f"the pinned known_hosts {known_hosts} does not exist",
                         hint="the plan's `known_hosts` must name the file with the guest's host key; the run cannot "
                              "connect without it either") from None
    except OSError as exc:
        raise InputError(f"cannot read the pinned known_hosts {known_hosts}: {exc.strerror}") from None
    except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError) as exc:
        raise InputError(f"the pinned known_hosts {known_hosts} has a line the run cannot read: {exc}",
                         hint="one `host type base64` entry per line; @cert-authority and @revoked lines are not "
                              "understood by the run's SSH (paramiko)") from None
    if not keys:
        raise HostKeyError(f"no host key for {lookup_name(host, port)} in the pinned known_hosts {known_hosts}: "
                           "the run would refuse this host too (wildcard patterns do not count)")
    return tuple(f"{key.get_name()} {key.get_base64()}" for key in keys.values())


def _token_safe(path: Path | str) -> str:
    """A path for an ssh option that expands %-tokens (UserKnownHostsFile, IdentityFile)."""
    text = str(path)
    if "${" in text:
        raise InputError(f"{text}: OpenSSH would expand ${{...}} in this path", hint="rename the file or its directory")
    return text.replace("%", "%%")


def proxy_argument(template: str, host: str, port: int, user: str) -> str:
    """The plan's ProxyCommand as the run executes it: %h %p %r %% expanded by `expand`, split like
    paramiko's ProxyCommand (shlex, no shell), then quoted for the shell OpenSSH hands it to, with
    every % doubled so OpenSSH expands nothing more."""
    try:
        argv = shlex.split(expand(template, host, port, user))
    except ValueError as exc:  # paramiko's ProxyCommand fails on it the same way
        raise InputError(f"proxy_command {template!r}: {exc}", hint="fix the quoting in the plan's ssh section") from None
    return shlex.join(argv).replace("%", "%%")


def remote_forward_spec(forward: RemoteForward) -> str:
    """`-R`'s argument: the guest's 127.0.0.1:P to host:port as this machine reaches it."""
    host = f"[{forward.host}]" if ":" in forward.host else forward.host
    return f"127.0.0.1:{forward.listen_port}:{host}:{forward.port}"


def openssh_argv(call: SshCall, known_hosts: Path, ssh: str = SSH) -> list[str]:
    """The whole ssh command line for `call`; `known_hosts` holds `call.host_keys` under KEY_ALIAS."""
    argv = [ssh, "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={_token_safe(known_hosts)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={KEY_ALIAS}",
            "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no",
            "-o", f"ConnectTimeout={max(1, math.ceil(call.connect_timeout))}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", "ForwardAgent=no", "-o", "ForwardX11=no",
            "-p", str(call.port), "-l", call.user]
    if call.key is not None:
        argv += ["-i", _token_safe(call.key), "-o", "IdentitiesOnly=yes"]
    if call.proxy_command:
        argv += ["-o", "ProxyCommand=" + proxy_argument(call.proxy_command, call.host, call.port, call.user)]
    if call.forward is not None:
        argv += ["-R", remote_forward_spec(call.forward)]
    if call.command is not None:
        argv += ["-o", "BatchMode=yes"]  # nobody to answer a prompt
    argv.append("-t" if call.tty else "-T")  # a pty only for a shell on a terminal
    argv += ["--", call.host]
    if call.remote_command is not None:
        argv.append(call.remote_command)
    return argv


@contextmanager
def known_hosts_file(host_keys: Sequence[str]) -> Iterator[Path]:
    """A private known_hosts (0600 in a 0700 temp dir) with `host_keys` under KEY_ALIAS; removed
    afterwards."""
    with tempfile.TemporaryDirectory(prefix="upgrader-ssh-") as directory:
        path = Path(directory) / "known_hosts"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{KEY_ALIAS} {line}\n" for line in host_keys))
        yield path


def find_client() -> str:
    found = shutil.which(SSH)
    if found is None:
        raise InfraError("the OpenSSH client `ssh` is not on PATH",
                         hint="install it (Debian: `apt-get install openssh-client`)")
    return found


def _leave_to_child(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGQUIT from the terminal reach ssh too (same process group): ssh decides."""


def run_client(argv: list[str]) -> int:
    """Run ssh with this process's stdin, stdout and stderr; its exit code (128+N if a signal N
    killed it). Ctrl-C and Ctrl-\\ are left to ssh meanwhile (a handler, not SIG_IGN: ssh must
    not inherit an ignored SIGINT); SHELL is /bin/sh for the ProxyCommand, quoted for sh."""
    env = {**os.environ, "SHELL": "/bin/sh"}
    previous: dict[signal.Signals, object] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGQUIT):
            previous[signum] = signal.signal(signum, _leave_to_child)
    except ValueError:  # not the main thread: the signals are not ours
        pass
    try:
        rc = subprocess.run(argv, env=env, check=False).returncode
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    return 128 - rc if rc < 0 else rc
