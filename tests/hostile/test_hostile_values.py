"""Hostile values: host names that try shell or path tricks, command arguments full of shell
metacharacters, plan paths with spaces and `$`, corrupted state files, and two controllers
racing for one host. Everything runs on the in-package fakes (never the lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader import app, app_status
from upgrader.ports import cmd
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

ROOT = Path(__file__).resolve().parents[2]


def upgrader(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "upgrader.cli.main", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> tuple[int, str]:
    proc = upgrader(*args, cwd=cwd)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------- host names

BAD_HOSTS = [
    "mail;rm -rf /",
    "../x",
    "..",
    ".",
    "$(id)",
    "`id`",
    "mail\nhost",
    "mail host",
    "a/b",
    "/etc",
    "mail|cat /etc/passwd",
    "mail&&touch pwned",
    ">pwned",
    "x" * 64,
    "",
    "-rf",
    "\u043c\u0430\u0438\u043b",  # Cyrillic look-alike of "mail"
]


@pytest.mark.parametrize("host", BAD_HOSTS, ids=[repr(h)[:20] for h in BAD_HOSTS])
def test_bad_host_name_start_exits_2(tmp_path: Path, fake_world: WorldFile, fake_plan: Path, host: str) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    state = cwd / "state"
    before = tree(tmp_path)
    rc, out = run_cli("--state-dir", str(state), "-q", "start", host, "--plan", str(fake_plan), cwd=cwd)
    assert rc == 2, out
    assert "Traceback" not in out and "internal error" not in out, out
    created = {p for p in tree(tmp_path) - before if not p.startswith("cwd/state")}
    assert created == set(), f"created outside the state dir: {created}"
    assert not (state.exists() and any(state.iterdir())), list(state.rglob("*"))
    world = json.loads(fake_world.path.read_text())
    assert world["effects"] == [], "the fake world was touched"


@pytest.mark.parametrize("verb", ["status", "resume", "abort", "show"])
def test_bad_host_name_other_commands_in_process(tmp_path: Path, verb: str) -> None:
    ctx = app.Context(RunStore(tmp_path / "state"))
    calls = {"status": lambda h: app_status.status(ctx, h), "resume": lambda h: app.resume(ctx, h),
             "abort": lambda h: app.abort(ctx, h), "show": lambda h: app.journal(ctx, h)}
    from upgrader.errors import InputError

    for host in ["../x", "mail;rm -rf /", "$(id)", "a\nb", "/etc"]:
        with pytest.raises(InputError) as info:
            calls[verb](host)
        assert info.value.exit_code == 2 and info.value.hint
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


# ------------------------------------------------------------------------------- cmd quoting

NASTY_VALUES = [
    "",
    " ",
    "plain",
    "a b  c",
    "; rm -rf /",
    "$(id)",
    "`id`",
    "${HOME}",
    "$HOME",
    "'",
    '"',
    "'\"'\"'",
    "it's",
    "\\",
    "\\'",
    "a\nb",
    "\n",
    "\t",
    "a|b",
    "a&b",
    "a&&b||c",
    "<in >out 2>&1",
    "*",
    "?",
    "[a-z]",
    "~",
    "~root",
    "#comment",
    "!",
    "!!",
    "{a,b}",
    "-n",
    "--",
    "-e x",
    "%s%d%%",
    "=",
    "a=b",
    "\x01\x1b[31mred",
    "é 日本 \U0001f4a9",
    "$'\\x41'",
    "\"$(touch /tmp/upgrader-pwned)\"",
    "'; touch /tmp/upgrader-pwned; '",
]


@pytest.mark.parametrize("value", NASTY_VALUES, ids=[repr(v)[:24] for v in NASTY_VALUES])
def test_cmd_quotes_every_metacharacter(tmp_path: Path, value: str) -> None:
    command = cmd("printf %s {}", value)
    out = subprocess.run(["sh", "-c", command.line], cwd=tmp_path, capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout == value.encode(), command.line
    assert list(tmp_path.iterdir()) == []  # no redirection created a file


def test_cmd_quotes_several_arguments(tmp_path: Path) -> None:
    values = NASTY_VALUES[:20]
    template = "printf '%s\\0' " + " ".join("{}" for _ in values)
    out = subprocess.run(["sh", "-c", cmd(template, *values).line], cwd=tmp_path, capture_output=True, timeout=10)
    assert out.stdout.split(b"\0")[:-1] == [v.encode() for v in values]
    assert not Path("/tmp/upgrader-pwned").exists()


def test_cmd_masks_secrets_with_metacharacters() -> None:
    secret = "p@ss w'rd$(id)"
    command = cmd("login {} {}", "user", secret, secrets=[secret])
    assert secret not in command.masked() and "***" in command.masked()
    assert "w'rd" not in str(command)


# ------------------------------------------------------------------------------- odd paths in plans


def test_fake_run_with_spaces_and_dollar_in_sync_path(tmp_path: Path, fake_world: WorldFile) -> None:
    odd_dir = tmp_path / "plans $HOME dir"
    odd_dir.mkdir()
    plan = odd_dir / "my plan $(id).yml"
    text = FAKE_PLAN.format(world=fake_world.path, keep="1h").replace(
        "- path: /var/mail/", "- path: \"/var/mail spool/$USER's box/\"\n      exclude: ['*.tmp $x', \"a'b\"]")
    text = text.replace("takeover:\n", "  allow_dangerous_paths: true\ntakeover:\n")  # spaces, $ and ' need it
    plan.write_text(text)
    ctx = app.Context(RunStore(tmp_path / "state dir $x"))
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase.value == "completed"
    record = app.decommission(ctx, "mailhost")
    assert record.phase.value == "decommissioned" and record.finished
    assert record.plan_path == str(plan.resolve())
    world = json.loads(fake_world.path.read_text())
    assert [e["op"] for e in world["effects"]].count("snapshot") == 1


# ------------------------------------------------------------------------------- corrupted state


def _finished_run(tmp_path: Path, plan: Path, keep: str | None = None) -> tuple[Path, Path]:
    """A fake run through the CLI in-process API: returns (state dir, run dir)."""
    state = tmp_path / "state"
    record = app.start(app.Context(RunStore(state)), app.StartOptions("mailhost", str(plan)))
    assert record.phase.value == "completed", record
    if keep is None:  # finished: decommissioned
        record = app.decommission(app.Context(RunStore(state)), "mailhost")
        assert record.phase.value == "decommissioned", record
    return state, state / "mailhost" / record.run_id


def _assert_corrupt(out: str, rc: int, needle: str) -> None:
    assert rc == 4, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert needle in out, out
    assert "hint:" in out, out


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "not-an-object", "wrong-host"])
def test_corrupt_run_json_exits_4(tmp_path: Path, fake_plan: Path, damage: str) -> None:
    state, run_dir = _finished_run(tmp_path, fake_plan)
    path = run_dir / "run.json"
    data = path.read_bytes()
    path.write_bytes({
        "truncate": data[: len(data) // 2],
        "garble": data[:40] + b"\x00\xff garbage {{{" + data[60:],
        "empty": b"",
        "not-an-object": b"[1, 2, 3]\n",
        "wrong-host": data.replace(b'"host": "mailhost"', b'"host": "other"'),
    }[damage])
    for verb in ("status", "resume"):
        rc, out = run_cli("--state-dir", str(state), verb, "mailhost", cwd=tmp_path)
        _assert_corrupt(out, rc, "run.json")
    rc, out = run_cli("--state-dir", str(state), "status", cwd=tmp_path)  # every host
    _assert_corrupt(out, rc, "run.json")


def test_garbage_line_in_middle_of_journal_exits_4(tmp_path: Path, fake_plan: Path) -> None:
    # keep_old_for 1h: the run completes and parks (not finished), so resume reads its journal
    state, run_dir = _finished_run(tmp_path, fake_plan, keep="1h")
    path = run_dir / "journal.jsonl"
    lines = path.read_bytes().split(b"\n")
    middle = len(lines) // 2
    lines.insert(middle, b"\x00garbage, not json")
    path.write_bytes(b"\n".join(lines))
    rc, out = run_cli("--state-dir", str(state), "resume", "mailhost", cwd=tmp_path)
    _assert_corrupt(out, rc, f"journal.jsonl:{middle + 1}")
    rc, out = run_cli("--state-dir", str(state), "show", "mailhost", cwd=tmp_path)
    _assert_corrupt(out, rc, f"journal.jsonl:{middle + 1}")


def test_garbage_line_in_journal_of_finished_run(tmp_path: Path, fake_plan: Path) -> None:
    """A finished run: `show`, `status` and `resume` all read the journal (status and resume check
    run.json against it) and exit 4 naming file:line, without a traceback."""
    state, run_dir = _finished_run(tmp_path, fake_plan)
    path = run_dir / "journal.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines.insert(3, b"{not json")
    path.write_bytes(b"\n".join(lines))
    rc, out = run_cli("--state-dir", str(state), "show", "mailhost", cwd=tmp_path)
    _assert_corrupt(out, rc, "journal.jsonl:4")
    for verb in ("status", "resume"):
        rc, out = run_cli("--state-dir", str(state), verb, "mailhost", cwd=tmp_path)
        _assert_corrupt(out, rc, "journal.jsonl:4")


def test_deleted_journal_blocks_rollback(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Review finding 5: without its journal a completed run must not be rolled back as if the
    takeover never happened (no reverse sync): exit 4, nothing touched."""
    state, run_dir = _finished_run(tmp_path, fake_plan, keep="1h")
    (run_dir / "journal.jsonl").unlink()
    effects = json.loads(fake_world.path.read_text())["effects"]
    for verb in ("rollback", "resume", "show"):
        rc, out = run_cli("--state-dir", str(state), verb, "mailhost", cwd=tmp_path)
        _assert_corrupt(out, rc, "journal.jsonl is missing")
    assert json.loads(fake_world.path.read_text())["effects"] == effects
    assert json.loads((run_dir / "run.json").read_text())["phase"] == "completed"


def test_deleted_run_json_is_not_forgotten(tmp_path: Path, fake_plan: Path) -> None:
    """Review finding 7: the run stays visible as corrupt; no new run starts beside it."""
    state, run_dir = _finished_run(tmp_path, fake_plan, keep="1h")
    (run_dir / "run.json").unlink()
    for args in (("status",), ("list",), ("status", "mailhost"), ("resume", "mailhost"), ("rollback", "mailhost", "--yes"),
                 ("start", "mailhost", "--plan", str(fake_plan))):
        rc, out = run_cli("--state-dir", str(state), *args, cwd=tmp_path)
        _assert_corrupt(out, rc, f"{run_dir / 'run.json'} is missing")
    assert [p.name for p in (state / "mailhost").iterdir() if p.is_dir()] == [run_dir.name]


@pytest.mark.parametrize("tail", [b'{"kind": "done", "ke', b"\x00\x00\x00", b'{"kind": "begin"}'])
def test_torn_last_journal_line_is_tolerated(tmp_path: Path, fake_plan: Path, tail: bytes) -> None:
    state, run_dir = _finished_run(tmp_path, fake_plan, keep="1h")
    path = run_dir / "journal.jsonl"
    with open(path, "ab") as f:
        f.write(tail)  # no newline: a crash mid-append
    rc, out = run_cli("--state-dir", str(state), "-q", "resume", "mailhost", cwd=tmp_path)
    assert rc == 0, out
    assert "Traceback" not in out
    assert "journal.jsonl" not in out
    rc, out = run_cli("--state-dir", str(state), "show", "mailhost", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in out, out
    entries = RunStore(state).journal("mailhost", run_dir.name)
    assert entries and all(isinstance(e, dict) for e in entries)


# ------------------------------------------------------------------------------- racing controllers


@pytest.mark.parametrize("attempt", range(5))
def test_two_controllers_racing_exactly_one_wins(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                 attempt: int) -> None:
    state, reached = tmp_path / "state", tmp_path / "reached"
    env = {"UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(reached)}
    args = ("--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(fake_plan))
    procs = [upgrader(*args, cwd=tmp_path, env=env), upgrader(*args, cwd=tmp_path, env=env)]
    try:
        deadline = time.monotonic() + 60
        loser = None
        while time.monotonic() < deadline and loser is None:
            loser = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.02)
        assert loser is not None, "neither process gave up"
        winner = procs[1 - procs.index(loser)]
        out = loser.stdout.read() if loser.stdout else ""
        assert loser.returncode == 3, out
        assert f"locked by pid {winner.pid}" in out, out
        assert "Traceback" not in out
        while not reached.exists():  # the winner goes on to the pause point
            assert winner.poll() is None, winner.stdout.read() if winner.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    world = json.loads(fake_world.path.read_text())
    assert [e["op"] for e in world["effects"]].count("snapshot") == 1
    assert len([d for d in (state / "mailhost").iterdir() if d.is_dir()]) == 1
