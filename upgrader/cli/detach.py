"""`upgrader start --detach`: the same start as a background process that outlives the shell.

The child runs `upgrader --state-dir DIR [-q] start HOST --plan FILE [--now] [--yes]` (the same
command line without --detach) in a new session (setsid: no controlling terminal, so the SIGHUP
of a closed SSH session never reaches it; SIGHUP is ignored as well), stdin from /dev/null,
stdout and stderr to STATE/HOST/detached-<stamp>.log (a new 0600 file). The parent prints the
pid and the log and exits 0; `upgrader status HOST` follows the run (`active` while it runs,
`interrupted` if it is killed)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from upgrader.errors import InputError
from upgrader.store import RunStore, check_dir, secure_open

FIRST_LOOK = 0.5  # seconds: a start refused at once (busy, bad plan) is said here, not only in the log


def detached_log(root: Path, host: str) -> Path:
    """A new 0600 log file in the host's directory (created 0700 if needed; UnsafeState if not ours)."""
    directory = RunStore(root).host_dir(host)  # checks the host name
    if not check_dir(directory):
        for each in (root, directory):  # each 0700 (parents=True would make the state root 0755)
            each.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_dir(directory)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return directory / f"detached-{stamp}-{os.getpid()}.log"


def _ignore_hangup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def start_detached(console: Console, root: Path, host: str, plan: str, *, now: bool, yes: bool, quiet: bool) -> int:
    from upgrader import app

    app.load(plan)  # a plan that cannot start is refused here, with its errors, before anything is detached
    # the plan as given: the child runs in this directory and looks it up as `start` does
    args = ["--state-dir", str(root.resolve()), *(["-q"] if quiet else []), "start", host, "--plan", plan,
            *(["--now"] if now else []), *(["--yes"] if yes else [])]
    log = detached_log(root, host)
    fd = secure_open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        child = subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", *args], stdin=subprocess.DEVNULL,
                                 stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                 preexec_fn=_ignore_hangup, cwd=os.getcwd())
    except OSError as exc:
        raise InputError(f"cannot start the detached run: {exc.strerror}") from exc
    finally:
        os.close(fd)
    deadline = time.monotonic() + FIRST_LOOK
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if child.returncode is not None and child.returncode != 0:  # refused at once: say why here
        console.print(f"the detached start ended at once (exit {child.returncode}); its log {log}:")
        sys.stdout.write(log.read_text(errors="replace")[-3000:])
        return child.returncode
    console.print(f"started in the background: pid {child.pid}, log {log}")
    console.print(f"`upgrader status {host}` follows it")
    return 0
