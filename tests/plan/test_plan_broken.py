"""Every broken plan in fixtures/broken/ gives a PlanError whose lines are exactly
`file:line:col: key.path: message` (file as passed to load_plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.errors import InputError, PlanError
from upgrader.plan import load_plan, parse_plan

BROKEN = Path(__file__).parent / "fixtures" / "broken"

# fixture name -> expected problem lines, without the leading "<file>:"
EXPECTED: dict[str, list[str]] = {
    "wrong_bool": ['14:13: upgrade[1].reboot: expected true/false, got "yes please"'],
    "wrong_int": ['8:11: ssh.prod.port: expected an integer, got "twenty-two"'],
    "int_as_string": ['10:11: ssh.staging.port: expected an integer, got "22"'],
    "port_range": ["10:11: ssh.staging.port: must be between 1 and 65535, got 70000"],
    "unknown_top": [
        "20:1: rollback_after: unknown key (allowed: version, description, source, ssh, staging, "
        "guest_state_dir, upgrade, validate, verify, sync, takeover, window, announce, operator, approval, keep_old_for, on_failure)"
    ],
    "unknown_nested": ["12:3: staging.netwrok: unknown key (allowed: network, twin_name, packages)"],
    "missing_key": ['3:3: source.domain: missing required key "domain"'],
    "duplicate_key": ['5:3: source.domain: duplicate key "domain" (first defined at 4:3)'],
    "yaml_syntax": ["12:8: expected ',' or ']', but got ':' (while parsing a flow sequence at line 11)"],
    "tab_indent": [
        "11:1: found character '\\t' that cannot start any token; YAML does not allow tabs for indentation, use spaces"
    ],
    "not_mapping": ["1:1: expected a mapping at the top level, got a list"],
    "empty": ["1:1: the plan is empty"],
    "comments_only": ["1:1: the plan is empty"],
    "step_neither": ['14:5: upgrade[1]: an upgrade step needs "run", "reboot" or "ansible"'],
    "check_two_kinds": [
        '23:11: validate[0].http: a check has exactly one of "tcp", "smtp", "imap", "http", "command"; this one also has "tcp"'
    ],
    "bad_duration": ['14:14: upgrade[0].timeout: expected a duration like "30s", "15m", "2h", "7d", got "2 hours"'],
    "bad_regex": [
        "23:15: validate[0].smtp.banner: not a valid regular expression "
        '(missing ), unterminated subpattern at position 5): "^220 (ESMTP"'
    ],
    "bad_prompt_regex": [
        "15:17: upgrade[0].expect[0].prompt: not a valid regular expression "
        '(unterminated character set at position 0): "[y/n"'
    ],
    "ip_move_no_address": ['19:3: takeover.address: required when strategy is "ip_move"'],
    "bad_timezone": [
        '21:13: window.timezone: unknown time zone "Mars/Olympus_Mons" (expected an IANA name like "Europe/Berlin" or "UTC")'
    ],
    "crlf_subject": ["23:12: announce.subject: must not contain line breaks (CR/LF): they would inject mail headers"],
    "bad_strategy": ['19:13: takeover.strategy: expected one of "mac_move", "ip_move", got "arp_spoof"'],
    "non_utf8": ["4:16: not valid UTF-8 (byte 0xf6); save the file as UTF-8"],
    "alias_bomb": ["2:8: aliases (*a) are not allowed in plan files; repeat the value instead"],
    "reboot_false": ["14:13: upgrade[1].reboot: reboot: false does nothing; remove the step"],
    "duplicate_check_name": ['23:11: validate[1].name: duplicate check name "smtp" (also item 0)'],
    "window_two_schedules": [
        '23:10: window.rrule: a window has exactly one of "start", "weekly", "rrule"; this one also has "start"'
    ],
    "upgrade_not_list": ['12:10: upgrade: expected a list, got "freebsd-update install"'],
    "relative_sync_path": ['17:13: sync.paths[0].path: must be an absolute path (starting with /), got "var/mail/"'],
    "bad_email": ['21:11: announce.sender: expected an email address like ops@example.org, got "ops at example.org"'],
    "merge_key": ["21:3: description: merge keys (<<) are not allowed in plan files"],
    "sync_root": [
        '17:13: sync.paths[0].path: "/" is a whole system directory: rsync --delete would copy production\'s over '
        "the upgraded twin (and the twin's over the old VM on rollback), undoing the upgrade; list the data "
        "directories below it (like /var/mail/) instead, or set sync.allow_dangerous_paths: true if you really mean it"
    ],
    "sync_dotdot": ['17:13: sync.paths[0].path: contains a ".." component; write the directory it means without ".."'],
    "sync_shell": [
        "17:13: sync.paths[0].path: contains a space; a sync path may contain only letters, digits and "
        "/ . _ - + @ = , % (rsync before 3.2.4 hands it to the shell on production); if the directory really has "
        "such a name and production's rsync is 3.2.4 or later, set sync.allow_dangerous_paths: true"
    ],
    "sync_duplicate": ['18:13: sync.paths[1].path: the same directory as sync.paths[0] ("/var/mail"); list it once'],
    "lone_surrogate": [
        "14:11: upgrade[0].name: contains a lone surrogate (a YAML escape like \\ud800 that is not a character); "
        "write the character itself, or \\U0001F600 for one outside the BMP"
    ],
    "zero_timeout": ["15:14: upgrade[1].timeout: must be longer than 0s, got 0s"],
    "never_rrule": [
        "22:10: window.rrule: the rule never fires in the 10 years after 2000-01-01 (where a rule without DTSTART "
        "begins): it can never match (like BYMONTH=2;BYMONTHDAY=30) or its UNTIL comes before its start; fix the rule"
    ],
    "packages_https": ['12:21: staging.packages.proxy: must be an http:// URL (the forward carries plain TCP to an HTTP '
                       'proxy), got "https://mirror.example.org:3142"'],
    "packages_secret": ["13:12: staging.packages.proxy: no user:password@ in the URL: the plan must not hold a secret"],
    "packages_port": ["12:52: staging.packages.port: must be between 1 and 65535, got 70000"],
    "packages_unknown": ["12:46: staging.packages.mirror: unknown key (allowed: proxy, port)"],
    "multiple_problems": [
        "10:11: ssh.staging.port: must be between 1 and 65535, got 0",
        '15:13: upgrade[1].reboot: expected true/false, got "maybe"',
    ],
}


def test_every_fixture_has_an_expectation() -> None:
    on_disk = {p.stem for p in BROKEN.glob("*.yml")}
    assert on_disk == set(EXPECTED), "fixtures and EXPECTED disagree"
    assert len(on_disk) >= 18


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_plan_message(name: str) -> None:
    path = str(BROKEN / f"{name}.yml")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    err = info.value
    assert err.problems == [f"{path}:{line}" for line in EXPECTED[name]]
    assert str(err).splitlines()[0] == f"{path}:{EXPECTED[name][0]}"
    assert isinstance(err, InputError) and err.exit_code == 2
    assert err.hint


def test_filename_is_used_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    with pytest.raises(PlanError) as info:
        load_plan("wrong_bool.yml")
    assert info.value.problems[0].startswith("wrong_bool.yml:14:13: upgrade[1].reboot: ")


def test_problems_are_sorted_by_line() -> None:
    text = (BROKEN / "multiple_problems.yml").read_text()
    text = text.replace("takeover:\n", "takeover:\n  strategy: teleport\n")
    with pytest.raises(PlanError) as info:
        parse_plan(text, "m.yml")
    lines = [int(p.split(":")[1]) for p in info.value.problems]
    assert lines == sorted(lines) and len(lines) == 3


def test_missing_file() -> None:
    with pytest.raises(PlanError, match="no such file"):
        load_plan("/nonexistent/plan.yml")


def test_directory_is_not_a_plan(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory"):
        load_plan(tmp_path)


def test_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_text("description: x\n" + "# padding\n" * 120_000)
    with pytest.raises(PlanError, match="too large"):
        load_plan(big)
    with pytest.raises(PlanError, match="too large"):
        parse_plan(big.read_text(), "big.yml")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('description: "a\\u0000b"\n', None),  # an escaped NUL inside a quoted string is fine YAML
        ("description: a\x07b\n", "control character U+0007 is not allowed in YAML"),
        ("description: " + "[" * 50_000 + "]" * 50_000 + "\n", "the YAML is nested too deeply"),
        ("description: !!python/object:os.system ls\n", "could not determine a constructor"),
        ("---\na: 1\n---\nb: 2\n", "expected a single document"),
        ("? [a, b]\n: 1\n", "keys must be plain strings"),
        ("80: http\n", "keys must be strings, got 80 (quote it)"),
    ],
)
def test_hostile_yaml_is_a_plan_error(snippet: str, expected: str | None) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(snippet, "h.yml")
    if expected is not None:
        assert expected in str(info.value)
    assert all(p.startswith("h.yml:") for p in info.value.problems)
