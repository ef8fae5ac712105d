"""The pure parts of the real adapters: rsync stats, ProxyCommand expansion, output masking,
marker wrapping. The adapters themselves are proven on the lab (tests/e2e)."""

from __future__ import annotations

from pathlib import Path

from upgrader.adapters.fabric_shell import _Lines, expand
from upgrader.adapters.rsync_syncer import parse_stats
from upgrader.ports import Command, cmd

RSYNC_STATS = """
Number of files: 1,234 (reg: 1,200, dir: 34)
Number of created files: 10 (reg: 10)
Number of deleted files: 3 (reg: 3)
Number of regular files transferred: 1,017
Total file size: 9,876,543 bytes
Total transferred file size: 2,345,678 bytes
Literal data: 2,345,678 bytes
"""


def test_parse_stats_counts_transfers_and_deletions() -> None:
    assert parse_stats(RSYNC_STATS) == (1017 + 3, 2345678)


def test_parse_stats_nothing_to_do() -> None:
    assert parse_stats("Number of regular files transferred: 0\nTotal transferred file size: 0 bytes\n") == (0, 0)


def test_expand_proxy_command() -> None:
    assert expand("ip netns exec ns nc %h %p # %r %% %x", "192.0.2.10", 25, "root") == "ip netns exec ns nc 192.0.2.10 25 # root % %x"


def test_output_lines_masked_and_split() -> None:
    seen: list[str] = []
    stream = _Lines(seen.append, ["s3cret"])
    stream.write("one\r\ntwo with s3cret in")
    stream.write(" it\nthree")
    stream.flush()
    assert seen == ["one", "two with *** in it", "three"]


def test_command_quotes_arguments_and_masks_secrets() -> None:
    c = cmd("useradd -p {} {}", "pa ss;rm -rf /", "bob$(x)", secrets=["pa ss;rm -rf /"])
    assert c.line == "useradd -p 'pa ss;rm -rf /' 'bob$(x)'"
    assert c.masked() == "useradd -p *** 'bob$(x)'"


def test_raw_command_keeps_braces() -> None:
    assert Command.raw("awk '{print $1}' /etc/passwd").line == "awk '{print $1}' /etc/passwd"


# ------------------------------------------------------------------ done-markers, run by a real sh


def sh(line: str, timeout: float = 20) -> int:
    import subprocess

    return subprocess.run(["sh", "-c", line], timeout=timeout).returncode


def test_marker_written_only_after_a_zero_exit(tmp_path) -> None:
    from upgrader.adapters.fabric_shell import with_marker
    from upgrader.steps.guest import is_marked, marker_path

    ok, bad = marker_path(str(tmp_path / "st"), "r1", "upgrade[0]"), marker_path(str(tmp_path / "st"), "r1", "upgrade[1]")
    assert sh(with_marker("echo hi; exit 0", ok)) == 0
    assert sh(with_marker("exit 3", bad)) == 3
    assert sh(is_marked(str(tmp_path / "st"), "r1", "upgrade[0]").line) == 0
    assert sh(is_marked(str(tmp_path / "st"), "r1", "upgrade[1]").line) == 1
    assert sorted(p.name for p in (tmp_path / "st" / "r1").iterdir()) == ["upgrade_0_.done"]  # no running-file left


def test_probe_waits_for_a_command_that_outlived_its_connection(tmp_path) -> None:
    """The command keeps running after the orchestrator lost it: the probe must wait for its end
    and then see the marker, instead of answering "not done" and letting it be started twice."""
    import subprocess
    import time

    from upgrader.adapters.fabric_shell import with_marker
    from upgrader.ports import running_path
    from upgrader.steps.guest import is_marked, marker_path

    mark = marker_path(str(tmp_path), "r1", "upgrade[2]")
    first = subprocess.Popen(["sh", "-c", with_marker("sleep 1.5", mark)])
    deadline = time.monotonic() + 10
    while not Path(running_path(mark)).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert sh(is_marked(str(tmp_path), "r1", "upgrade[2]").line) == 0  # waited, then found it done
    assert time.monotonic() - started > 0.5
    assert first.wait(timeout=10) == 0


def test_rsync_cut_short_is_run_again() -> None:
    from upgrader.adapters.rsync_syncer import RSYNC_ATTEMPTS, RsyncSyncer, transient
    from upgrader.ports import SIGNALLED, Result

    assert all(transient(rc) for rc in (10, 12, 20, 30, 35, 255, 137, SIGNALLED))
    assert not any(transient(rc) for rc in (0, 1, 2, 3, 11, 23, 24))

    class Shell:
        def __init__(self, codes: list[int]) -> None:
            self.codes, self.calls = codes, 0

        def run(self, command, **_: object) -> Result:
            self.calls += 1
            return Result(command.line, self.codes.pop(0))

    said: list[str] = []
    killed_once = Shell([SIGNALLED, 0])
    assert RsyncSyncer._rsync(killed_once, Command("rsync"), said.append).rc == 0  # type: ignore[arg-type]
    assert killed_once.calls == 2 and "running it again" in said[0]
    always = Shell([20] * 9)
    assert RsyncSyncer._rsync(always, Command("rsync"), None).rc == 20  # type: ignore[arg-type]
    assert always.calls == RSYNC_ATTEMPTS
    real_error = Shell([23])
    assert RsyncSyncer._rsync(real_error, Command("rsync"), None).rc == 23 and real_error.calls == 1  # type: ignore[arg-type]
