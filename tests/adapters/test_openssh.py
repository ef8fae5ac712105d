"""`upgrader ssh`'s OpenSSH command line, as data: the run's pinned host keys (paramiko's own
lookup), its ProxyCommand, key, port and user, and the remote command quoted."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import paramiko
import pytest

from upgrader.adapters.fabric_shell import HostKeyError
from upgrader.adapters.openssh import (
    KEY_ALIAS,
    SshCall,
    known_hosts_file,
    openssh_argv,
    pinned_keys,
    proxy_argument,
)
from upgrader.errors import InputError

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxXeq8jgCVscBO6p/ZCuPObNlqMWZPA6sJK2UnFDx/u"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KNOWN = Path("/tmp/kh/known_hosts")


def call(**fields: object) -> SshCall:
    base: dict[str, object] = {"host": "10.0.0.5", "port": 2222, "user": "root", "key": Path("/keys/id_ed25519"),
                               "proxy_command": "ssh -W %h:%p jump.example.org", "connect_timeout": 10.0,
                               "host_keys": (ED,)}
    return SshCall(**{**base, **fields})  # type: ignore[arg-type]


def options(argv: list[str]) -> list[str]:
    """The values of every `-o` in argv."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]


def test_one_command_pinned_batch_no_pty() -> None:
    argv = openssh_argv(call(command=("sh", "-c", "exit 7")), KNOWN)
    assert argv[:3] == ["ssh", "-F", "/dev/null"]  # no ~/.ssh/config, no /etc/ssh/ssh_config
    opts = options(argv)
    for pinned in (f"UserKnownHostsFile={KNOWN}", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes",
                   f"HostKeyAlias={KEY_ALIAS}", "UpdateHostKeys=no", "IdentitiesOnly=yes", "BatchMode=yes",
                   "ProxyCommand=ssh -W 10.0.0.5:2222 jump.example.org", "ConnectTimeout=10"):
        assert pinned in opts, pinned
    assert argv[argv.index("-i") + 1] == "/keys/id_ed25519"
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"
    assert "-T" in argv and "-t" not in argv
    assert argv[-3:] == ["--", "10.0.0.5", "sh -c 'exit 7'"]


def test_interactive_shell_gets_a_pty_only_on_a_terminal() -> None:
    on_tty = openssh_argv(call(tty=True), KNOWN)
    assert "-t" in on_tty and "BatchMode=yes" not in options(on_tty) and on_tty[-2:] == ["--", "10.0.0.5"]
    piped = openssh_argv(call(tty=False), KNOWN)  # a script on stdin: no pty, and ssh says nothing about it
    assert "-t" not in piped and "-T" in piped and piped[-2:] == ["--", "10.0.0.5"]


def test_no_key_no_proxy_in_the_plan() -> None:
    argv = openssh_argv(call(key=None, proxy_command=None, port=22), KNOWN)
    assert "-i" not in argv and not any(o.startswith(("ProxyCommand", "IdentitiesOnly")) for o in options(argv))
    assert argv[argv.index("-p") + 1] == "22"


@pytest.mark.parametrize("command", [
    ("cat", "/var/mail/it's here"),
    ("sh", "-c", "echo $HOME; $(reboot) `id` | tee /tmp/x"),
    ("printf", "%s\n", "a b", ""),
    ("--prod", "-x"),
])
def test_remote_command_is_each_argument_quoted(command: tuple[str, ...]) -> None:
    argv = openssh_argv(call(command=command), KNOWN)
    assert shlex.split(argv[-1]) == list(command)  # the remote POSIX shell gets exactly these words


def test_proxy_command_is_what_paramiko_would_exec() -> None:
    template = 'sh -c "exec nc %h %p" # %r %% %x'
    expanded = 'sh -c "exec nc 10.0.0.5 2222" # root % %x'
    quoted = proxy_argument(template, "10.0.0.5", 2222, "root")
    # paramiko's ProxyCommand runs shlex.split(expanded) without a shell; OpenSSH gives the sh it
    # runs the command with one string: the same words once sh unquotes it (and OpenSSH the %%)
    assert shlex.split(quoted.replace("%%", "%")) == shlex.split(expanded) == ["sh", "-c", "exec nc 10.0.0.5 2222", "#", "root", "%", "%x"]
    assert "%%" in quoted and "%x" not in quoted.replace("%%", "")  # OpenSSH expands no token of its own
    with pytest.raises(InputError, match="proxy_command"):
        proxy_argument('nc "%h %p', "h", 22, "root")


def test_token_characters_in_paths_are_not_expanded() -> None:
    argv = openssh_argv(call(key=Path("/keys/100%/id")), Path("/tmp/a%b/known_hosts"))
    assert argv[argv.index("-i") + 1] == "/keys/100%%/id"
    assert "UserKnownHostsFile=/tmp/a%%b/known_hosts" in options(argv)
    with pytest.raises(InputError, match="would expand"):
        openssh_argv(call(key=Path("/keys/${HOME}/id")), KNOWN)


# ------------------------------------------------------------------ the run's host key lookup


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pinned_keys_by_the_runs_name_for_the_port(tmp_path: Path) -> None:
    kh = write(tmp_path / "kh", f"# comment\n[10.0.0.5]:2222 {ED}\n10.0.0.5 {OTHER}\n")
    assert pinned_keys(kh, "10.0.0.5", 2222) == (ED,)
    assert pinned_keys(kh, "10.0.0.5", 22) == (OTHER,)
    hashed = paramiko.HostKeys.hash_host("[10.0.0.5]:2222")
    assert pinned_keys(write(tmp_path / "hashed", f"{hashed} {ED}\n"), "10.0.0.5", 2222) == (ED,)


@pytest.mark.parametrize("line", [f"* {ED}", f"10.0.0.* {ED}", f"[10.0.0.5]:22 {ED}", f"10.0.0.5 {ED}"])
def test_what_the_run_would_refuse_is_refused(tmp_path: Path, line: str) -> None:
    """OpenSSH alone would accept a wildcard entry; the run's paramiko does not, so neither do we."""
    with pytest.raises(HostKeyError, match=r"no host key for \[10.0.0.5\]:2222") as info:
        pinned_keys(write(tmp_path / "kh", line + "\n"), "10.0.0.5", 2222)
    assert info.value.exit_code == 5 and info.value.hint


def test_unreadable_known_hosts_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        pinned_keys(tmp_path / "missing", "h", 22)
    with pytest.raises(InputError, match="cannot read"):
        pinned_keys(write(tmp_path / "ca", f"@cert-authority *.example.org {ED}\n"), "h", 22)


def test_known_hosts_file_is_private_and_removed() -> None:
    with known_hosts_file((ED, OTHER)) as path:
        assert path.read_text() == f"{KEY_ALIAS} {ED}\n{KEY_ALIAS} {OTHER}\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert not path.exists() and not path.parent.exists()
