"""The pure parts of the real adapters: rsync stats, ProxyCommand expansion, output masking,
marker wrapping. The adapters themselves are proven on the lab (tests/e2e)."""

from __future__ import annotations

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
