"""The sync key: checked, atomic edits of authorized_keys (also on a full disk), the restricted
line and its forced command, its marker, its removal on the way out, and `sweep` — first with the
scripts run by sh / busybox on temp dirs, then against real dropbear and OpenSSH sshd's on
127.0.0.1 (tests/adapters/sshd_servers.py)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from upgrader.adapters.rsync_session import RsyncSession
from upgrader.adapters.rsync_syncer import (
    KEYS_SCRIPT,
    MARKER,
    RsyncSyncer,
    SyncKeyError,
    edit_keys,
    key_line,
    key_pattern,
    new_key_id,
    serve_script,
)
from upgrader.errors import ConnectionLost, InfraError, StepFailed
from upgrader.ports import Command, Result

RUN = "20261124T201500Z-3f9a"
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxXeq8jgCVscBO6p/ZCuPObNlqMWZPA6sJK2UnFDx/u"
# today's (70a9e28) removal, kept to prove the full-disk fixture reproduces the review's finding 6
OLD_DEAUTHORIZE = ("touch ~/.ssh/authorized_keys && grep -v upgrader-sync ~/.ssh/authorized_keys > ~/.ssh/authorized_keys.upgrader; "
                   "mv ~/.ssh/authorized_keys.upgrader ~/.ssh/authorized_keys")
BUSYBOX_TOOLS = ("sh", "grep", "cp", "mv", "rm", "mkdir", "cmp", "cat", "wc", "printf", "touch")


def foreign_keys(n: int) -> str:
    return "".join(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i:043d} admin{i}@example.org\n" for i in range(n))


@pytest.fixture(params=["dash", "busybox"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Runs a script like the lab guest (busybox sh with busybox's applets only) or like Debian."""
    if request.param == "dash":
        if shutil.which("dash") is None:
            pytest.skip("no dash")
        return ["dash"]
    if not os.access("/bin/busybox", os.X_OK):
        pytest.skip("no /bin/busybox")
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir()
    for tool in BUSYBOX_TOOLS:
        (bin_dir / tool).symlink_to("/bin/busybox")
    return [str(bin_dir / "sh")]


def run_keys(shell: list[str], home: Path, pattern: str, add: str = "", path: str | None = None) -> subprocess.CompletedProcess[str]:
    if path is None:
        path = str(Path(shell[0]).parent) if "/" in shell[0] else os.environ["PATH"]
    return subprocess.run([*shell, "-c", KEYS_SCRIPT, "upgrader-keys", pattern, add], env={"HOME": str(home), "PATH": path},
                          capture_output=True, text=True, timeout=30)


def make_home(root: Path, content: str, mode: int = 0o600) -> Path:
    (root / ".ssh").mkdir(parents=True, mode=0o700)
    keys = root / ".ssh" / "authorized_keys"
    keys.write_text(content)
    os.chmod(keys, mode)
    return keys


# ------------------------------------------------------------------------- marker and patterns


def test_key_id_names_the_run_and_a_random_nonce() -> None:
    first, second = new_key_id(RUN), new_key_id(RUN)
    assert re.fullmatch(rf"upgrader-sync-{RUN}-[0-9a-f]{{8}}", first) and first != second
    with pytest.raises(ValueError):
        new_key_id("x; rm -rf /")


def test_patterns_pick_one_key_a_run_or_every_run() -> None:
    lines = {
        "mine": f"{PUBLIC} {MARKER}-{RUN}-0badf00d",
        "same run": f"{PUBLIC} {MARKER}-{RUN}-12345678",
        "old format": f"{PUBLIC} {MARKER}-{RUN}",
        "other run": f"{PUBLIC} {MARKER}-20261201T000000Z-aaaa-87654321",
        "admin": f"{PUBLIC} admin@upgrader-sync.example.org",
        "admin2": f"{PUBLIC} {MARKER}-notes and more",
    }

    def hits(pattern: str) -> set[str]:
        return {name for name, line in lines.items() if re.search(pattern, line)}

    assert hits(key_pattern(key_id=f"{MARKER}-{RUN}-0badf00d")) == {"mine"}
    assert hits(key_pattern(RUN)) == {"mine", "same run", "old format"}
    assert hits(key_pattern()) == {"mine", "same run", "old format", "other run"}


def test_key_line_is_restricted_without_restrict() -> None:
    serve = f"/root/.upgrader-sync/{MARKER}-{RUN}-0badf00d.serve"
    openssh = key_line(PUBLIC, f"{MARKER}-{RUN}-0badf00d", serve, openssh=True)
    assert openssh == (f'from="127.0.0.1,::1",command="/bin/sh {serve}",no-pty,no-agent-forwarding,no-X11-forwarding,'
                       f"no-port-forwarding {PUBLIC} {MARKER}-{RUN}-0badf00d")
    dropbear = key_line(PUBLIC, f"{MARKER}-{RUN}-0badf00d", serve, openssh=False)
    assert dropbear == openssh.removeprefix('from="127.0.0.1,::1",') and "restrict" not in openssh
    with pytest.raises(StepFailed, match="refusing to authorise"):
        key_line(PUBLIC + ' x\ncommand="sh"', "k", serve, openssh=True)


# ----------------------------------------------------- authorized_keys edits, run by a real sh


def test_edit_keeps_foreign_lines_mode_and_drops_only_sync_lines(shell: list[str], tmp_path: Path) -> None:
    keys = make_home(tmp_path, foreign_keys(3) + f"{PUBLIC} {MARKER}-{RUN}\nssh-rsa AAAAB3 last-without-newline", 0o640)
    line = f'command="/bin/sh /x.serve",no-pty {PUBLIC} {MARKER}-{RUN}-0badf00d'
    done = run_keys(shell, tmp_path, key_pattern(), line)
    assert done.returncode == 0, done.stderr
    assert "removed=1 kept=4" in done.stdout
    assert keys.read_text() == foreign_keys(3) + "ssh-rsa AAAAB3 last-without-newline\n" + line + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640
    done = run_keys(shell, tmp_path, key_pattern(key_id=f"{MARKER}-{RUN}-0badf00d"))
    assert done.returncode == 0 and "removed=1 kept=4" in done.stdout
    assert keys.read_text() == foreign_keys(3) + "ssh-rsa AAAAB3 last-without-newline\n"
    assert sorted(p.name for p in (tmp_path / ".ssh").iterdir()) == ["authorized_keys"]


def test_edit_without_a_file_creates_it_0600_only_to_add(shell: list[str], tmp_path: Path) -> None:
    nothing = run_keys(shell, tmp_path, key_pattern())
    assert nothing.returncode == 0 and "removed=0" in nothing.stdout and not (tmp_path / ".ssh").exists()
    added = run_keys(shell, tmp_path, key_pattern(), f"{PUBLIC} {MARKER}-{RUN}-0badf00d")
    assert added.returncode == 0, added.stderr
    keys = tmp_path / ".ssh" / "authorized_keys"
    assert keys.read_text() == f"{PUBLIC} {MARKER}-{RUN}-0badf00d\n" and stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_edit_refuses_a_symlink(shell: list[str], tmp_path: Path) -> None:
    real = make_home(tmp_path / "elsewhere", foreign_keys(2))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").symlink_to(real)
    done = run_keys(shell, tmp_path, key_pattern(), f"{PUBLIC} {MARKER}-{RUN}-0badf00d")
    assert done.returncode == 3 and "symbolic link" in done.stderr
    assert real.read_text() == foreign_keys(2)


def test_a_write_cut_short_without_an_error_leaves_the_file_untouched(tmp_path: Path) -> None:
    """A grep that loses output without saying so (a write error it does not report) stands in
    for a full disk without root: a grep that writes 100 of its lines and exits 0. The line count
    / content check must refuse the rename. (busybox sh runs its own grep applet whatever PATH
    says, so this runs under dash; test_full_disk_... runs both for real.)"""
    if shutil.which("dash") is None:
        pytest.skip("no dash")
    shell = ["dash"]
    original = foreign_keys(201) + f"{PUBLIC} {MARKER}-{RUN}\n"
    keys = make_home(tmp_path / "home", original)
    shim = tmp_path / "shim"
    shim.mkdir()
    real_grep = shutil.which("grep")
    (shim / "grep").write_text(f'#!/bin/sh\ncase " $* " in *" -v "*) {real_grep} "$@" | head -n 100; exit 0;; esac\nexec {real_grep} "$@"\n')
    os.chmod(shim / "grep", 0o755)
    path = f"{shim}:{os.environ['PATH']}"
    for pattern, add in ((key_pattern(), ""), (key_pattern(), f"{PUBLIC} {MARKER}-{RUN}-0badf00d")):
        done = run_keys(shell, tmp_path / "home", pattern, add, path=path)
        assert done.returncode == 3 and "left as it was" in done.stderr, (done.stdout, done.stderr)
        assert keys.read_text() == original
        assert sorted(p.name for p in keys.parent.iterdir()) == ["authorized_keys"]


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB tmpfs (the review's case), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_a_write_cut_short_... simulates the same failure")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    return filler


def test_full_disk_leaves_201_keys_untouched(shell: list[str], full_tmpfs: Path) -> None:
    """Finding 6: on a full 200 KiB tmpfs the old removal turned 201 keys into 0 with exit 0."""
    original = foreign_keys(200) + f"{PUBLIC} {MARKER}-{RUN}\n"
    witness = make_home(full_tmpfs / "witness", original)
    keys = make_home(full_tmpfs / "home", original)
    filler = fill(full_tmpfs)
    for add in ("", f'command="/bin/sh /x.serve" {PUBLIC} {MARKER}-{RUN}-0badf00d'):
        done = run_keys(shell, full_tmpfs / "home", key_pattern(), add)
        assert done.returncode == 3 and "left as it was" in done.stderr, (done.stdout, done.stderr)
        assert keys.read_text() == original
        assert sorted(p.name for p in keys.parent.iterdir()) == ["authorized_keys"]
    old = subprocess.run([*shell, "-c", OLD_DEAUTHORIZE], env={"HOME": str(full_tmpfs / "witness"), "PATH": os.environ["PATH"]},
                         capture_output=True)
    assert old.returncode == 0 and witness.read_text().count("\n") < 200  # the same disk, the old way: keys lost
    filler.unlink()
    done = run_keys(shell, full_tmpfs / "home", key_pattern())
    assert done.returncode == 0 and "removed=1 kept=200" in done.stdout
    assert keys.read_text() == foreign_keys(200)


# ------------------------------------------------------------------ the forced command, by sh


@pytest.fixture
def serve(tmp_path: Path) -> Path:
    """The forced command with an `rsync` that prints what it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rsync").write_text('#!/bin/sh\necho "rsync ran: $*"\n')
    os.chmod(bin_dir / "rsync", 0o755)
    script = tmp_path / "key.serve"
    script.write_text(serve_script(f"{MARKER}-{RUN}-0badf00d", ["/var/mail/", "/srv/data/"]))
    return script


def run_serve(shell: list[str], script: Path, command: str | None, client: str = "127.0.0.1 40000 22") -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{script.parent / 'bin'}:{Path(shell[0]).parent if '/' in shell[0] else os.environ['PATH']}",
           "SSH_CONNECTION": f"{client} 127.0.0.1 22"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return subprocess.run([*shell, str(script)], env=env, capture_output=True, text=True, timeout=10)


SENDER = "rsync --server --sender -lHogDtpre.iLsfxCIvu --numeric-ids . /var/mail/"


def test_forced_command_runs_only_the_rsync_sender_for_this_syncs_paths(shell: list[str], serve: Path) -> None:
    ok = run_serve(shell, serve, SENDER)
    assert ok.returncode == 0 and ok.stdout.strip() == "rsync ran: " + SENDER.removeprefix("rsync ")
    assert run_serve(shell, serve, "rsync --server --sender -logDtpr . /srv/data/").returncode == 0  # old rsync
    refused = {
        "shell": "sh -c id",
        "interactive": None,
        "chained": SENDER + "; id",
        "substitution": SENDER + "$(id)",
        "newline": SENDER + "\nid",
        "receiver": "rsync --server -lHogDtpre.iLsfxCIvu . /var/mail/",
        "other path": "rsync --server --sender -lHogDtpre.iLsfxCIvu . /etc/",
        "traversal": "rsync --server --sender -lHogDtpre.iLsfxCIvu . /var/mail/../../etc/",
        "extra path": SENDER + " /etc/shadow",
        "deleting": "rsync --server --sender --remove-source-files -lHogDtpre . /var/mail/",
        "log file": "rsync --server --sender --log-file=/etc/passwd -lHogDtpre . /var/mail/",
        "glob": "rsync --server --sender -lHogDtpre . /var/mai*/",
        "daemon": "rsync --server --daemon .",
    }
    for name, command in refused.items():
        done = run_serve(shell, serve, command)
        assert done.returncode == 1 and "rsync ran" not in done.stdout and "upgrader-sync: refused" in done.stderr, name
    remote = run_serve(shell, serve, SENDER, client="192.0.2.7 40000 22")
    assert remote.returncode == 1 and "loopback" in remote.stderr and "rsync ran" not in remote.stdout


def test_a_path_the_forced_command_cannot_match_is_refused_before_anything_runs() -> None:
    with pytest.raises(StepFailed, match="only letters"):
        serve_script(f"{MARKER}-{RUN}-0badf00d", ["/var/my mail/"])


# ------------------------------------------------- removal on the way out, with stand-in shells


class StubShell:
    """A FabricShell stand-in: answers from a table, records every command."""

    def __init__(self, name: str, answers: dict[str, Result | BaseException] | None = None) -> None:
        self.name, self.answers, self.seen = name, answers or {}, []  # type: ignore[var-annotated]

    def ensure(self, wait: float | None = None) -> None:
        return None

    def run(self, command: Command, **kwargs: object) -> Result:
        self.seen.append((command.line, kwargs.get("timeout")))
        for needle, answer in self.answers.items():
            if needle in command.line:
                if isinstance(answer, BaseException):
                    raise answer
                return answer
        return Result(command.masked(), 0, "upgrader-keys: removed=1 kept=3\n")


def test_cleanup_is_bounded_and_never_replaces_the_original_error(monkeypatch: pytest.MonkeyPatch) -> None:
    syncer = RsyncSyncer(None, RUN)  # type: ignore[arg-type]
    said: list[str] = []
    src = StubShell("prod", {"upgrader-keys": ConnectionLost("fake: gone")})
    dst = StubShell("staging")
    assert syncer._revoke(src, f"{MARKER}-{RUN}-0badf00d", "/w/k.serve", said.append) is False  # type: ignore[arg-type]
    assert syncer._remove_keypair(dst, f"{MARKER}-{RUN}-0badf00d", "/w/k", said.append) is True  # type: ignore[arg-type]
    assert "removing the sync key" in said[0] and "sweep" in said[0]
    assert all(timeout is not None and timeout <= 30 for _, timeout in src.seen + dst.seen)
    assert dst.seen[0][0] == "rm -rf /w/k"

    # the transfer dies (SIGTERM turned into an exception by the CLI, here KeyboardInterrupt):
    # the key is removed and that very exception propagates, even when the removal fails
    src_ok, dst_bad = StubShell("prod"), StubShell("staging", {"rm -rf": RuntimeError("clean-up bug")})

    class Shells:
        targets = {"prod": None, "staging": None}

        def connect(self, role: str) -> StubShell:
            return {"prod": src_ok, "staging": dst_bad}[role]

    syncer = RsyncSyncer(Shells(), RUN)  # type: ignore[arg-type]
    monkeypatch.setattr(syncer, "_keygen", lambda dst, keydir: PUBLIC)
    monkeypatch.setattr("upgrader.adapters.rsync_syncer.sshd_banner", lambda src, port: "SSH-2.0-dropbear_2022.83")

    def killed(*args: object, **kwargs: object) -> tuple[int, int, int]:
        raise KeyboardInterrupt

    class Gone:  # the session's transport: already closed, so no forward to cancel
        def is_active(self) -> bool:
            return False

    monkeypatch.setattr(syncer, "_tunnel", lambda src, dst, keydir, carry: (Gone(), Gone(), 40000, f"{keydir}/rsh"))
    monkeypatch.setattr(syncer, "_transfer", killed)
    monkeypatch.setattr(RsyncSession, "check_tunnel", lambda self: None)  # stand-in shells hold no connection
    with pytest.raises(KeyboardInterrupt):
        syncer.sync("prod", "staging", [("/var/mail", [])], final=False)
    lines = [line for line, _ in src_ok.seen]
    key_id = re.search(rf"{MARKER}-{RUN}-[0-9a-f]{{8}}", lines[-1]).group(0)  # type: ignore[union-attr]
    assert f"' {key_id}$'" in lines[-1] and "rm -f" in lines[-1]  # the removal, of this key only


def test_authorising_failure_raises_with_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    full = Result("sh -c ...", 3, "", "upgrader: /root/.ssh/authorized_keys left as it was: cannot copy it (disk full?)")
    src = StubShell("prod", {"upgrader-keys ' upgrader-sync-[A-Za-z0-9-]+$' 'from=": full})

    class Shells:
        targets = {"prod": None, "staging": None}

        def connect(self, role: str) -> StubShell:
            return src if role == "prod" else StubShell("staging")

    syncer = RsyncSyncer(Shells(), RUN)  # type: ignore[arg-type]
    monkeypatch.setattr(syncer, "_keygen", lambda dst, keydir: PUBLIC)
    monkeypatch.setattr("upgrader.adapters.rsync_syncer.sshd_banner", lambda src, port: "SSH-2.0-OpenSSH_4.5p1 FreeBSD-20061110")
    with pytest.raises(SyncKeyError) as caught:
        syncer.sync("prod", "staging", [("/var/mail", [])], final=False)
    assert caught.value.result is full and "disk full" in str(caught.value) and caught.value.hint
    assert 'from="127.0.0.1,::1"' in src.seen[1][0]  # OpenSSH, even 4.5: from= as well


def test_edit_command_quotes_its_arguments() -> None:
    command = edit_keys(key_pattern(), f"{PUBLIC} it's; $(reboot)")
    assert command.args[1:] == (key_pattern(), f"{PUBLIC} it's; $(reboot)")
    assert command.line.startswith("sh -c 'umask 077") and "'\"'\"'s; $(reboot)'" in command.line


# ------------------------------------------------------------- against real sshd's on loopback


from tests.adapters.sshd_servers import Server, plan_for, why_not  # noqa: E402


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("orchestrator") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def start(kind: str, base: Path, client_key: Path) -> Server:
    reason = why_not(kind)
    if reason:
        pytest.skip(f"{kind}: {reason}")
    return Server(kind, base, client_key).start()


@pytest.fixture(params=["dropbear", "openssh"])
def guests(request: pytest.FixtureRequest, tmp_path: Path, client_key: Path) -> Iterator[tuple[Server, Server]]:
    """prod (the sync's source) runs dropbear or OpenSSH's sshd; staging (the target) dropbear."""
    started: list[Server] = []
    try:
        started.append(start(request.param, tmp_path / "prod", client_key))
        started.append(start("dropbear", tmp_path / "staging", client_key))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def real_syncer(prod: Server, staging: Server, connect_wait: float = 2.0) -> RsyncSyncer:
    from upgrader.adapters.fabric_shell import FabricShells

    shells = FabricShells(plan_for(prod, staging), wait=5)  # type: ignore[arg-type]
    return RsyncSyncer(shells, RUN, sshd_port=prod.port, connect_wait=connect_wait)


def sync_lines(server: Server) -> list[str]:
    return [line for line in server.authorized_keys.read_text().splitlines() if MARKER in line]


def test_sync_through_the_restricted_key_and_nothing_left(guests: tuple[Server, Server]) -> None:
    prod, staging = guests
    (prod.data / "mail").mkdir()
    (prod.data / "mail" / "m1").write_text("hello\n")
    (staging.data / "mail").mkdir()
    (staging.data / "mail" / "stale").write_text("deleted by --delete\n")
    stale = f"{PUBLIC} {MARKER}-20260101T000000Z-dead-00000000"  # left by a killed sync of an older run
    with prod.authorized_keys.open("a") as f:
        f.write(stale + "\n")
    syncer = real_syncer(prod, staging)
    said: list[str] = []
    try:
        stats = syncer.sync("prod", "staging", [("/mnt/mail", [])], final=True, on_output=said.append)
    finally:
        syncer.shells.reset()
    assert sorted(p.name for p in (staging.data / "mail").iterdir()) == ["m1"]
    assert (staging.data / "mail" / "m1").read_text() == "hello\n"
    assert re.fullmatch(rf"{MARKER}-{RUN}-[0-9a-f]{{8}}", stats.key_id) and not stats.key_left and stats.rc == 0
    assert any("removed 1 sync key(s)" in line for line in said)
    assert sync_lines(prod) == [] and prod.authorized_keys.read_text().splitlines()[0].endswith(" orchestrator")
    assert stat.S_IMODE(prod.authorized_keys.stat().st_mode) == 0o600
    for server in guests:
        workdir = server.home / ".upgrader-sync"
        assert not workdir.exists() or list(workdir.iterdir()) == [], list(workdir.iterdir())


def test_a_session_runs_two_passes_through_one_key_then_removes_it(guests: tuple[Server, Server],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncer.open sets the key and the tunnel up once; each pass is only rsync; close removes it all."""
    prod, staging = guests
    (prod.data / "mail").mkdir()
    (prod.data / "mail" / "m1").write_text("one\n")
    (staging.data / "mail").mkdir()
    syncer = real_syncer(prod, staging)
    try:
        session = syncer.open("prod", "staging", [("/mnt/mail", [])])
        assert [line.split()[-1] for line in sync_lines(prod)] == [session.key_id]
        first = session.pass_(final=False)
        (prod.data / "mail" / "m2").write_text("two\n")
        ran: list[str] = []
        for shell in (session.src, session.dst):
            real_run = shell.run
            monkeypatch.setattr(shell, "run", lambda command, _run=real_run, **kw: (ran.append(command.line), _run(command, **kw))[1])
        second = session.pass_(final=True)
        assert ran and all(line.startswith("rsync ") for line in ran), ran  # no key, no forward, no wrapper
        assert session.close() and session.close()  # idempotent
        with pytest.raises(InfraError):
            session.pass_(final=True)
    finally:
        syncer.shells.reset()
    assert first.files == 1 and second.files == 1 and first.key_id == second.key_id == session.key_id
    assert sorted(p.name for p in (staging.data / "mail").iterdir()) == ["m1", "m2"]
    assert sync_lines(prod) == [] and prod.authorized_keys.read_text().splitlines()[0].endswith(" orchestrator")
    for server in guests:
        workdir = server.home / ".upgrader-sync"
        assert not workdir.exists() or list(workdir.iterdir()) == [], list(workdir.iterdir())


def test_the_key_runs_rsync_sender_and_nothing_else(guests: tuple[Server, Server], tmp_path: Path) -> None:
    """The line the syncer authorises, tried with the OpenSSH client: rsync's sender works,
    a shell, a command, a forward, sftp, another path or another source address do not."""
    from upgrader.adapters.rsync_tunnel import sshd_banner

    prod, staging = guests
    (prod.data / "mail").mkdir()
    (prod.data / "mail" / "m1").write_text("hello\n")
    (prod.data / "secret").write_text("root only\n")
    syncer = real_syncer(prod, staging)
    src, dst = syncer.shells.connect("prod"), syncer.shells.connect("staging")
    try:
        key_id = new_key_id(RUN)
        keydir, serve_path = f"/root/.upgrader-sync/{key_id}", f"/root/.upgrader-sync/{key_id}.serve"
        public = syncer._keygen(dst, keydir)
        banner = sshd_banner(src, prod.port)
        assert ("OpenSSH" in banner) == (prod.kind == "openssh")
        (prod.home / ".upgrader-sync").mkdir(mode=0o700)
        (prod.home / ".upgrader-sync" / f"{key_id}.serve").write_text(serve_script(key_id, ["/mnt/mail/"]))
        line = key_line(public, key_id, serve_path, openssh="OpenSSH" in banner)
        assert src.run(edit_keys(key_pattern(), line)).ok
    finally:
        syncer.shells.reset()
    assert ('from="127.0.0.1,::1"' in line) == (prod.kind == "openssh")
    key = staging.home / ".upgrader-sync" / key_id / "key"

    pulled = tmp_path / "pulled"
    rsh = (f"ssh -p {prod.port} -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o LogLevel=ERROR -F /dev/null")
    ok = subprocess.run(["rsync", "-aH", "--numeric-ids", "-e", rsh, "root@127.0.0.1:/mnt/mail/", f"{pulled}/"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert (pulled / "m1").read_text() == "hello\n"

    other_path = subprocess.run(["rsync", "-a", "-e", rsh, "root@127.0.0.1:/mnt/secret", f"{tmp_path}/x"],
                                capture_output=True, text=True, timeout=30)
    assert other_path.returncode != 0 and "not one this sync copies" in other_path.stderr
    pushed = subprocess.run(["rsync", "-a", "-e", rsh, f"{pulled}/", "root@127.0.0.1:/mnt/mail/"],
                            capture_output=True, text=True, timeout=30)
    assert pushed.returncode != 0 and "refused" in pushed.stderr

    shell = prod.ssh(key, "root@127.0.0.1", "sh -c id")
    assert shell.returncode != 0 and "uid=" not in shell.stdout and "refused" in shell.stderr
    with_pty = prod.ssh(key, "-tt", "root@127.0.0.1")  # no-pty honoured; ssh gives up (-tt insists)
    assert with_pty.returncode != 0 and "PTY allocation request failed" in with_pty.stderr
    login = prod.ssh(key, "-T", "root@127.0.0.1")  # a login shell without a pty: the forced command
    assert login.returncode != 0 and "only 'rsync --server --sender' runs" in login.stderr
    forward = prod.ssh(key, "-W", f"127.0.0.1:{prod.port}", "root@127.0.0.1")
    assert forward.returncode != 0 and "SSH-" not in forward.stdout
    sftp = subprocess.run(["sftp", "-P", str(prod.port), "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-F", "/dev/null", "-b", "-", "root@127.0.0.1"],
                          input="get /mnt/secret\n", capture_output=True, text=True, timeout=20)
    assert sftp.returncode != 0 and not Path("secret").exists()
    elsewhere = prod.ssh(key, "root@127.0.0.1", "rsync --server --sender -lHogDtpre.iLsfxCIvu . /mnt/mail/", source="127.0.0.2")
    assert elsewhere.returncode != 0 and "hello" not in elsewhere.stdout
    if prod.kind == "openssh":  # from= refuses the key itself: sshd falls through to "Permission denied"
        assert "Permission denied" in elsewhere.stderr
    else:  # dropbear has no from=: the forced command refuses the address
        assert "loopback" in elsewhere.stderr


def test_dropbear_refuses_a_line_with_from(guests: tuple[Server, Server]) -> None:
    """Why the line has no from= on dropbear: 2022.83 rejects the whole line ("Bad public key
    options"), so the key would not work at all; OpenSSH honours it."""
    prod, staging = guests
    public = Path(str(prod.client_key) + ".pub").read_text().split()[:2]
    prod.authorized_keys.write_text(f'from="127.0.0.1,::1",no-pty {" ".join(public)} orchestrator\n')
    done = prod.ssh(prod.client_key, "root@127.0.0.1", "echo in")
    if prod.kind == "dropbear":
        assert done.returncode != 0 and "Bad public key options" in prod.log
    else:
        assert done.returncode == 0 and done.stdout.strip() == "in"


def test_sweep_removes_left_keys_and_survives_a_guest_that_does_not_answer(guests: tuple[Server, Server]) -> None:
    prod, staging = guests
    mine = [f"{PUBLIC} {MARKER}-{RUN}-0badf00d", f"{PUBLIC} {MARKER}-{RUN}"]
    other = f"{PUBLIC} {MARKER}-20260101T000000Z-dead-00000000"
    with prod.authorized_keys.open("a") as f:
        f.write("\n".join(mine + [other]) + "\n")
    left = staging.home / ".upgrader-sync" / f"{MARKER}-{RUN}-0badf00d"
    left.mkdir(parents=True)
    (left / "key").write_text("private\n")
    syncer = real_syncer(prod, staging, connect_wait=1.0)
    assert syncer.sweep(["prod", "staging"], RUN) == 2
    assert sync_lines(prod) == [other] and not left.exists()
    assert syncer.sweep(["prod", "staging"], RUN) == 0  # nothing there: fine
    assert syncer.sweep(["prod"]) == 1 and sync_lines(prod) == []
    with pytest.raises(ValueError):
        syncer.sweep(["old"])
    staging.stop()
    assert syncer.sweep(["staging", "prod"]) == 0  # staging does not answer: skipped, prod swept
    with pytest.raises(InfraError):
        syncer.sweep(["staging"], strict=True)
