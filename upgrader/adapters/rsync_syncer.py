"""The Syncer port: rsync between two guests that cannot reach each other.

rsync runs on the *target* guest and pulls from the *source* over SSH, through channels the
orchestrator holds open: a direct-tcpip channel over the source's SSH connection to the source's own
sshd (127.0.0.1:22 there), and a remote forward on the target's SSH connection back to it. The
networks never join.

The key rsync uses is made on the target for this one sync and its public half authorised on the
source, marked `upgrader-sync-<run_id>-<nonce>` and restricted: a forced command (a small sh
script written next to it on the source) that runs only `rsync --server --sender` for the paths of
this sync and only for a connection from the source's own loopback, plus no-pty,
no-agent-forwarding, no-X11-forwarding, no-port-forwarding; `from="127.0.0.1,::1"` as well when the
source's sshd is OpenSSH (dropbear refuses the whole line for an option it does not know, `from=`
among them). No `restrict`: old OpenSSH does not know it. authorized_keys is only ever edited by
KEYS_SCRIPT: the new content goes to a temp file beside it, is checked line by line against the
old one, and renamed over it; on any failure the original is left as it was.

`open` sets all of that up once and returns a session; each `pass_` through it is only rsync (a
tunnel whose connection went raises ConnectionLost rather than retrying into it), `revoke` removes
the key line (one command on the source) and `close` the key pair as well (bounded, never hiding
the error that got there). `sync` is open + one pass + close, the close in a `finally`. A key left
by a killed process is removed when the next sync starts, or by `sweep`.
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

import paramiko

from upgrader.adapters.fabric_shell import FabricShell
from upgrader.adapters.rsync_session import RsyncSession
from upgrader.adapters.rsync_tunnel import forward, sshd_banner, unforward
from upgrader.errors import InfraError, StepFailed, UpgraderError
from upgrader.ports import SIGNALLED, Command, OutputSink, Result, SyncStats, cmd

if TYPE_CHECKING:
    from upgrader.adapters.fabric_shell import FabricShells

MARKER = "upgrader-sync"
WORKDIR = "/root/.upgrader-sync"
VANISHED = 24  # "some files vanished before they could be transferred": fine while prod serves
KEY_OPTIONS = "no-pty,no-agent-forwarding,no-X11-forwarding,no-port-forwarding"
LOOPBACK = "127.0.0.1,::1"
CLEANUP_TIMEOUT = 30.0  # each clean-up command; plus CONNECT_WAIT to reconnect a lost connection
CONNECT_WAIT = 15.0

# run ids, key ids and paths that go into the forced command and the patterns: nothing a shell,
# a regex or an authorized_keys option would read as syntax
_SAFE = re.compile(r"[A-Za-z0-9_./=,:@+-]+")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PUBLIC_KEY = re.compile(r"(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/]+={0,3}")
_KEYS_SUMMARY = re.compile(r"upgrader-keys: removed=(\d+) kept=(\d+)")

# the key pair, made on the target with whichever tool it has (key pairs of killed syncs removed
# first); prints the public key
KEYGEN = (
    "umask 077; rm -rf {stale} {dir} && mkdir -p {dir} && "
    "if command -v ssh-keygen >/dev/null; then ssh-keygen -q -t ed25519 -N '' -C {marker} -f {dir}/key && cat {dir}/key.pub; "
    "else dropbearkey -t ed25519 -f {dir}/key >/dev/null 2>&1 && dropbearkey -y -f {dir}/key | grep '^ssh-'; fi"
)

# The one way authorized_keys is edited (run as `sh -c KEYS_SCRIPT upgrader-keys PATTERN LINE`):
# drop the lines matching the extended regex PATTERN, append LINE unless it is empty. The new
# content is written to a temp file in the same directory (so the rename is atomic), checked
# (line count = old - dropped (+1), and byte for byte when cmp exists: a full disk cuts it short
# silently with some greps), given the old file's mode and owner (cp -p), then renamed over it.
# Any failure: temp file removed, original untouched, exit 3 with the reason on stderr.
# Prints `upgrader-keys: removed=N kept=M`. POSIX sh: busybox ash, dash, FreeBSD sh.
KEYS_SCRIPT = r"""umask 077
pat=$1 add=$2
dir=$HOME/.ssh
ak=$dir/authorized_keys
tmp=$ak.upgrader-$$
fail() {
    rm -f "$tmp"
    echo "upgrader: $ak left as it was: $*" >&2
    exit 3
}
trap 'rm -f "$tmp"' 0
trap 'rm -f "$tmp"; exit 129' 1 2 15
[ -n "$HOME" ] || fail "HOME is not set"
[ -L "$ak" ] && fail "it is a symbolic link; upgrader edits only a plain file"
if [ -e "$ak" ]; then
    src=$ak
    cp -p "$ak" "$tmp" || fail "cannot copy it to $tmp (disk full?)"
else
    src=/dev/null
    if [ -z "$add" ]; then echo "upgrader-keys: removed=0 kept=0"; exit 0; fi
    mkdir -p "$dir" || fail "cannot create $dir"
    : > "$tmp" || fail "cannot create $tmp (disk full?)"
fi
old=$(grep -c '' "$src")
ours=$(grep -E -c -e "$pat" "$src")
case "$old.$ours" in *[!0-9.]*|.*|*.) fail "cannot read it";; esac
grep -E -v -e "$pat" "$src" > "$tmp"
rc=$?
[ $rc -le 1 ] || fail "grep exited $rc writing $tmp (disk full?)"
if [ -n "$add" ]; then
    printf '%s\n' "$add" >> "$tmp" || fail "cannot append the key to $tmp (disk full?)"
fi
want=$((old - ours))
[ -n "$add" ] && want=$((want + 1))
new=$(grep -c '' "$tmp")
[ "$new" = "$want" ] || fail "$tmp has $new lines, $want expected (disk full?)"
[ $want -eq 0 ] || [ -s "$tmp" ] || fail "$tmp is empty (disk full?)"
if cmp -s /dev/null /dev/null 2>/dev/null; then
    { grep -E -v -e "$pat" "$src"; [ -z "$add" ] || printf '%s\n' "$add"; } | cmp -s - "$tmp" \
        || fail "$tmp differs from the expected content (disk full?)"
fi
mv -f "$tmp" "$ak" || fail "cannot rename $tmp over it"
echo "upgrader-keys: removed=$ours kept=$((old - ours))"
"""

# The forced command of a sync key, written to the source as <workdir>/<key id>.serve and run
# as `/bin/sh <that file>` (whatever the login shell is). @KEY@ and @PATHS@ are filled in.
SERVE_SCRIPT = r"""# upgrader sync key @KEY@: rsync's sending side of this sync's paths, from this machine only
refuse() {
    echo "upgrader-sync: refused: $*" >&2
    exit 1
}
client=${SSH_CONNECTION:-$SSH_CLIENT}
case ${client%% *} in
    127.0.0.1|::1|::ffff:127.0.0.1) ;;
    *) refuse "a connection from '${client%% *}', not from this machine's loopback" ;;
esac
cmd=$SSH_ORIGINAL_COMMAND
case $cmd in
    *[!A-Za-z0-9_./=,:@+\ -]*) refuse "a command with characters other than [A-Za-z0-9_./=,:@+ -]" ;;
    "rsync --server --sender "*) ;;
    *) refuse "'$cmd': only 'rsync --server --sender' runs with this key" ;;
esac
set -f
set -- $cmd
shift 3
while [ $# -gt 0 ]; do
    case $1 in
        .) shift; break ;;
        --numeric-ids) ;;
        -*[!A-Za-z.]*|--*) refuse "option $1" ;;
        -?*) ;;
        *) refuse "argument $1 before '.'" ;;
    esac
    shift
done
[ $# -gt 0 ] || refuse "no path"
for path in "$@"; do
    case $path in
        @PATHS@) ;;
        *) refuse "path $path: not one this sync copies" ;;
    esac
done
set -- $cmd
exec "$@"
"""


class SyncFailed(StepFailed):
    """A remote call of the sync failed; carries its Result (command, exit code, output)."""

    def __init__(self, what: str, where: str, result: Result, *, hint: str | None = None) -> None:
        short = " ".join(result.command.split())
        short = short if len(short) <= 100 else short[:99] + "…"
        super().__init__(f"{what} on {where}: `{short}` exited {result.rc}:\n{result.tail()}", hint=hint, result=result)


class SyncKeyError(SyncFailed):
    """Authorising or removing the sync key failed: authorized_keys was left as it was."""

    default_hint = ("the source's authorized_keys was left as it was (edits are checked, then renamed into "
                    "place); free space on the source or fix the reason above, then retry")


def new_key_id(run_id: str) -> str:
    """upgrader-sync-<run_id>-<8 hex>: the marker comment of one sync's key."""
    return f"{MARKER}-{_run_id(run_id)}-{secrets.token_hex(4)}"


def _run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: only letters, digits and '-' may go into a sync key's marker")
    return run_id


def key_pattern(run_id: str | None = None, key_id: str | None = None) -> str:
    """The extended regex (grep -E) of the authorized_keys lines a sync made: one key's, a run's
    (also the `upgrader-sync-<run_id>` of older versions), or any run's."""
    if key_id is not None:
        if not _SAFE.fullmatch(key_id) or not key_id.startswith(MARKER + "-"):
            raise ValueError(f"not a sync key id: {key_id!r}")
        return f" {key_id}$"
    if run_id is not None:
        return f" {MARKER}-{_run_id(run_id)}(-[0-9a-f]+)?$"
    return f" {MARKER}-[A-Za-z0-9-]+$"


def edit_keys(pattern: str, add: str = "", *, then: Command | None = None) -> Command:
    """The checked, atomic edit of the login user's ~/.ssh/authorized_keys (KEYS_SCRIPT);
    `then` runs after it whatever its outcome, and the edit's exit status is kept."""
    template, args = "sh -c {} upgrader-keys {} {}", (KEYS_SCRIPT, pattern, add)
    if then is not None:
        template, args = template + "; rc=$?; " + then.template + "; exit $rc", args + then.args
    return Command(template, args)


def serve_script(key_id: str, folders: Sequence[str]) -> str:
    for value in (key_id, *folders):
        if not _SAFE.fullmatch(value):
            raise StepFailed(f"sync path {value!r}: only letters, digits and _ . / = , : @ + - can be served to the sync key",
                             hint="rename the directory or sync a parent whose path is plain")
    return SERVE_SCRIPT.replace("@KEY@", key_id).replace("@PATHS@", "|".join(folders))


def key_line(public: str, key_id: str, serve: str, *, openssh: bool) -> str:
    """The authorized_keys line of a sync key. `from=` only for OpenSSH: dropbear (2022.83)
    rejects the whole line ("Bad public key options") for it; the forced command checks the
    client address itself on every server."""
    if not _PUBLIC_KEY.fullmatch(public):
        raise StepFailed(f"the target printed {public[:80]!r} as the sync key's public half; refusing to authorise it",
                         hint="the target needs ssh-keygen (OpenSSH) or dropbearkey making an ed25519 or RSA key")
    if not _SAFE.fullmatch(serve) or not _SAFE.fullmatch(key_id):
        raise ValueError(f"unsafe sync key id or forced command path: {key_id!r} {serve!r}")
    options = ([f'from="{LOOPBACK}"'] if openssh else []) + [f'command="/bin/sh {serve}"', KEY_OPTIONS]
    return f"{','.join(options)} {public} {key_id}"


def removed_count(result: Result) -> int:
    match = _KEYS_SUMMARY.search(result.stdout)
    return int(match.group(1)) if match else 0


RSYNC_ATTEMPTS = 3
# rsync's exit codes for a transfer cut short: socket I/O, protocol stream, signal, timeouts, ssh
_CUT_SHORT = {10, 12, 20, 30, 35, 255}


def transient(rc: int) -> bool:
    return rc in _CUT_SHORT or rc == SIGNALLED or rc > 128  # > 128: the shell saw rsync die of a signal


_STATS = {
    "files": re.compile(r"Number of regular files transferred:\s*([\d,.]+)"),
    "deleted": re.compile(r"Number of deleted files:\s*([\d,.]+)"),
    "bytes": re.compile(r"Total transferred file size:\s*([\d,.]+)"),
}


def parse_stats(text: str) -> tuple[int, int]:
    """(files changed incl. deletions, bytes transferred) from `rsync --stats` output."""
    values = {}
    for key, pattern in _STATS.items():
        match = pattern.search(text)
        values[key] = int(re.sub(r"[,.]", "", match.group(1))) if match else 0
    return values["files"] + values["deleted"], values["bytes"]


class RsyncSyncer:
    def __init__(self, shells: "FabricShells", run_id: str, *, workdir: str = WORKDIR, sshd_port: int = 22,
                 connect_wait: float = CONNECT_WAIT) -> None:
        """`workdir`: where the key pair (target) and the forced command (source) live;
        `sshd_port`: the source's own sshd as seen from the source (127.0.0.1:22 on a guest);
        `connect_wait`: how long a clean-up or a sweep tries to reach a guest."""
        self.shells, self.run_id = shells, _run_id(run_id)
        self.workdir, self.sshd_port, self.connect_wait = workdir, sshd_port, connect_wait

    def sync(
        self,
        source: str,
        target: str,
        paths: Sequence[tuple[str, Sequence[str]]],
        *,
        final: bool,
        on_output: OutputSink | None = None,
    ) -> SyncStats:
        """One pass in a session of its own: open, pass, close (the pre-sync passes, the reverse
        sync); `seconds` is the pass alone, the open and the close are `setup_seconds` and
        `close_seconds`."""
        started = time.monotonic()
        session = self.open(source, target, paths, on_output=on_output)
        setup = time.monotonic() - started
        try:
            stats = session.pass_(final=final, on_output=on_output)
        finally:
            closing = time.monotonic()
            left = not session.close()
            closed = time.monotonic() - closing
        return replace(stats, key_left=left, setup_seconds=round(setup, 3), close_seconds=round(closed, 3))

    def open(self, source: str, target: str, paths: Sequence[tuple[str, Sequence[str]]], *,
             on_output: OutputSink | None = None) -> "RsyncSession":
        """Everything a pass needs, set up once: the key pair on the target, the forced command
        and the authorised key on the source, the remote forward, the rsh wrapper. On a failure
        what was set up is removed again before the error propagates."""
        folders = [path.rstrip("/") + "/" for path, _ in paths]
        key_id = new_key_id(self.run_id)
        serve = serve_script(key_id, folders)  # refuses a path the forced command could not match
        src, dst = self.shells.connect(source), self.shells.connect(target)
        session = RsyncSession(self, src, dst, key_id, list(paths), on_output)
        try:
            public = self._keygen(dst, session.keydir)
            openssh = "OpenSSH" in sshd_banner(src, self.sshd_port)
            _must(src, cmd("umask 077 && mkdir -p {} && rm -f {}/{}-*.serve && printf %s {} > {} && [ $(wc -c < {}) -eq {} ]",
                           self.workdir, self.workdir, MARKER, serve, session.serve_path, session.serve_path,
                           str(len(serve.encode()))),
                  "writing the sync key's forced command")
            # one checked edit: drops every sync key left by a killed run, adds this one
            line = key_line(public, key_id, session.serve_path, openssh=openssh)
            result = src.run(edit_keys(key_pattern(), line), timeout=120)
            if not result.ok:
                raise SyncKeyError("authorising the sync key", src.name, result)
            if removed_count(result) and on_output:
                on_output(f"upgrader: removed {removed_count(result)} sync key(s) a killed sync left on {src.name}")
            session.src_transport, session.transport, session.remote_port, session.wrapper = self._tunnel(
                src, dst, session.keydir, lambda: not session.revoked)
        except BaseException:
            session.close()
            raise
        return session

    def _revoke(self, src: "FabricShell", key_id: str, serve_path: str, on_output: OutputSink | None) -> bool:
        """The key line and its forced command off the source, one command. True when gone."""
        return self._remove(src, edit_keys(key_pattern(key_id=key_id), then=cmd("rm -f {}", serve_path)),
                            f"removing the sync key {key_id}", on_output)

    def _remove_keypair(self, dst: "FabricShell", key_id: str, keydir: str, on_output: OutputSink | None) -> bool:
        return self._remove(dst, cmd("rm -rf {}", keydir), f"removing the sync key pair {key_id}", on_output)

    def _remove(self, shell: "FabricShell", command: Command, what: str, on_output: OutputSink | None) -> bool:
        """One clean-up command; bounded (CONNECT_WAIT to reconnect a lost connection,
        CLEANUP_TIMEOUT for the command) and never raising an Exception, so the error that
        brought us here is the one that propagates. True when it succeeded."""
        try:
            shell.ensure(wait=self.connect_wait)
            result = shell.run(command, timeout=CLEANUP_TIMEOUT)
            problem = "" if result.ok else f"exited {result.rc}: {result.tail(3)}"
        except Exception as exc:  # noqa: BLE001 - a clean-up must not replace the original error
            problem = f"{type(exc).__name__}: {exc}"
        if problem and on_output:
            on_output(f"upgrader: {what} on {shell.name} failed ({problem}); the next sync or a sweep removes it")
        return not problem

    def sweep(self, roles: Sequence[str], run_id: str | None = None, *, strict: bool = False) -> int:
        pattern = key_pattern(run_id)
        files = (cmd("rm -rf {}/{}-* {}/{}", self.workdir, f"{MARKER}-{run_id}", self.workdir, run_id) if run_id
                 else cmd("rm -rf {}", self.workdir))
        unknown = [role for role in roles if role not in self.shells.targets]
        if unknown:
            raise ValueError(f"sweep: unknown role(s) {', '.join(unknown)}; known: {', '.join(self.shells.targets)}")
        removed, problems = 0, []
        for role in roles:
            shell = FabricShell(self.shells, role, self.shells.targets[role])  # its own, with a short wait
            try:
                shell.ensure(wait=self.connect_wait)
                result = shell.run(edit_keys(pattern, then=files), timeout=CLEANUP_TIMEOUT)
            except UpgraderError as exc:
                problems.append(exc)
                continue
            finally:
                shell.close()
            if result.ok:
                removed += removed_count(result)
            else:
                problems.append(SyncKeyError("removing sync keys", role, result))
        if strict and problems:
            raise problems[0]
        return removed

    def _keygen(self, dst: "FabricShell", workdir: str) -> str:
        stale = f"{shlex.quote(self.workdir)}/{MARKER}-*"
        result = _must(dst, Command.raw(KEYGEN.format(stale=stale, dir=shlex.quote(workdir), marker=MARKER)),
                       "making the sync key")
        public = result.stdout.strip().splitlines()[-1:]
        if not public or not public[0].startswith("ssh-"):
            raise StepFailed(f"no public key from the key generator on {dst.name}: {result.tail()}",
                             hint="the target needs ssh-keygen (OpenSSH) or dropbearkey")
        return " ".join(public[0].split()[:2])

    @staticmethod
    def _rsync(dst: "FabricShell", command: Command, on_output: OutputSink | None,
               alive: Callable[[], None] | None = None) -> Result:
        """rsync is idempotent: a pass cut short (killed, connection reset, timeout) is run again,
        unless `alive` raises (ConnectionLost: the tunnel went with its connection, and a retry
        through it would only fail again)."""
        for attempt in range(1, RSYNC_ATTEMPTS + 1):
            result = dst.run(command, timeout=24 * 3600, on_output=on_output)
            if transient(result.rc) and alive is not None:
                alive()
            if not transient(result.rc) or attempt == RSYNC_ATTEMPTS:
                return result
            if on_output:
                on_output(f"upgrader: rsync exited {result.rc} (cut short); running it again ({attempt + 1} of {RSYNC_ATTEMPTS})")
        raise AssertionError("unreachable")

    def _tunnel(self, src: "FabricShell", dst: "FabricShell", workdir: str,
                carry: Callable[[], bool]) -> tuple[paramiko.Transport, paramiko.Transport, int, str]:
        """The remote forward on the target back to the source's sshd (carrying while `carry()`)
        and the rsh wrapper that uses it: (the source's transport its channels go over, the
        target's transport holding the forward, its port, the wrapper's path)."""
        src_transport = src.ensure().client.get_transport()
        dst_transport = dst.ensure().client.get_transport()
        if src_transport is None or dst_transport is None:
            raise InfraError("SSH connection closed before the sync could start")
        remote_port = forward(dst_transport, src_transport, self.sshd_port, carry)
        try:
            # The tunnel ends at the source's own sshd through the orchestrator's pinned connection,
            # so the guest-side client need not pin again (dbclient cannot take an alias anyway).
            if dst.run(Command("command -v ssh >/dev/null"), timeout=30).ok:
                client = (f"ssh -p {remote_port} -i {workdir}/key -o BatchMode=yes -o StrictHostKeyChecking=no "
                          "-o UserKnownHostsFile=/dev/null")
            else:
                client = f"dbclient -y -p {remote_port} -i {workdir}/key"
            wrapper = f"{workdir}/rsh"
            script = f'#!/bin/sh\nHOME={workdir}; export HOME\nexec {client} "$@"\n'
            _must(dst, cmd("printf %s {} > {} && chmod 700 {}", script, wrapper, wrapper), "writing the rsync remote shell")
        except BaseException:
            unforward(dst_transport, remote_port)
            raise
        return src_transport, dst_transport, remote_port, wrapper

    def _transfer(self, src: "FabricShell", dst: "FabricShell", wrapper: str, paths: Sequence[tuple[str, Sequence[str]]],
                  final: bool, on_output: OutputSink | None, *, alive: Callable[[], None] | None = None) -> tuple[int, int, int]:
        """rsync once per path through the session's wrapper: (files, bytes, worst exit code).
        `alive` raises ConnectionLost when the tunnel is gone (asked after a transfer cut short)."""
        user = src.target.user
        files = size = worst = 0
        for path, excludes in paths:
            folder = path.rstrip("/") + "/"
            args = ["rsync", "-aH", "--delete", "--numeric-ids", "--stats", "-e", wrapper]
            args += [f"--exclude={e}" for e in excludes]
            args += [f"{user}@127.0.0.1:{folder}", folder]
            result = self._rsync(dst, Command(" ".join(shlex.quote(a) for a in args)), on_output, alive)
            if result.rc != 0 and not (result.rc == VANISHED and not final):
                raise SyncFailed(f"rsync of {folder} {src.name} -> {dst.name}", dst.name, result,
                                 hint="a final pass must exit 0; nothing was switched over")
            f, b = parse_stats(result.stdout)
            files, size, worst = files + f, size + b, max(worst, result.rc)
        return files, size, worst


def _must(shell: "FabricShell", command: Command, what: str) -> Result:
    result = shell.run(command, timeout=120)
    if not result.ok:
        raise SyncFailed(what, shell.name, result)
    return result
