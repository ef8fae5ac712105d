"""The checks of upgrader/plan_checks.py through parse_plan: sync paths (normalised, dangerous
ones refused unless allowed), lone surrogates, timeouts > 0, and window rules that never fire."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from upgrader.errors import PlanError
from upgrader.plan import Plan, parse_plan
from upgrader.plan_checks import SYSTEM_DIRECTORIES, normalise_sync_path, rrule_problem

MINIMAL = (Path(__file__).parent / "fixtures" / "minimal.yml").read_text()
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def with_paths(*paths: str, allow: bool | None = None) -> str:
    lines = "".join(f"    - path: '{p}'\n" for p in paths)
    text = MINIMAL.replace("    - path: /var/mail/\n", lines)
    if allow is not None:
        text = text.replace("takeover:\n", f"  allow_dangerous_paths: {str(allow).lower()}\ntakeover:\n")
    return text


def problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plan(text, "p.yml", **kw)  # type: ignore[arg-type]
    return info.value.problems


# -- sync paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("/var/mail/", "/var/mail/"),
        ("/var/mail", "/var/mail"),
        ("/var//mail/./", "/var/mail/"),
        ("/var/./spool//postfix", "/var/spool/postfix"),
        ("/var/mail/.", "/var/mail/"),  # rsync reads a trailing /. as "the contents", like /
        ("/home/alice/", "/home/alice/"),
        ("/srv/mail-2.old/", "/srv/mail-2.old/"),
    ],
)
def test_sync_path_is_normalised(given: str, normal: str) -> None:
    plan = parse_plan(with_paths(given), "p.yml")
    assert [p.path for p in plan.sync.paths] == [normal]


@pytest.mark.parametrize("path", ["/", "//", "/./", "/usr/", "/etc", "/var/", "/usr/local", "/var/lib/", "/var/db/pkg/", "/home", "/root/"])
def test_system_directory_is_refused_unless_allowed(path: str) -> None:
    (problem,) = problems(with_paths(path))
    assert problem.startswith("p.yml:17:13: sync.paths[0].path: ")
    assert "is a whole system directory" in problem and "sync.allow_dangerous_paths: true" in problem
    assert isinstance(parse_plan(with_paths(path, allow=True), "p.yml"), Plan)


@pytest.mark.parametrize("bad", [";", " ", "$", "`", "|", "&", "*", "?", "[", "'", '"', "\\", "(", ">", "<", "!", "#", "~", ":"])
def test_shell_metacharacters_are_refused_unless_allowed(bad: str) -> None:
    path = f"/var/mail/{bad}x/"
    yaml_path = path.replace("'", "''")
    (problem,) = problems(with_paths(yaml_path))
    assert problem.startswith("p.yml:17:13: sync.paths[0].path: contains ")
    assert "rsync before 3.2.4" in problem and "sync.allow_dangerous_paths: true" in problem
    assert parse_plan(with_paths(yaml_path, allow=True), "p.yml").sync.paths[0].path == path


def test_the_review_examples_are_refused() -> None:
    assert "whole system directory" in problems(with_paths("/"))[0]
    assert '".." component' in problems(with_paths("/var/mail/../../"))[0]
    assert "contains a space" in problems(with_paths("/var/mail/ ; reboot"))[0]


@pytest.mark.parametrize(
    "scalar", ['"/var/mail/../../"', '"/var/.."', '"/var/mail\\u202e/"', '"/var/mail\\u200b"', '"/var/\\e[2Jmail/"', '"/var/mail\\n"']
)
def test_dotdot_and_control_characters_are_refused_even_when_allowed(scalar: str) -> None:
    text = with_paths("PLACEHOLDER", allow=True).replace("'PLACEHOLDER'", scalar)
    (problem,) = problems(text)
    assert problem.startswith("p.yml:17:13: sync.paths[0].path: contains ")
    assert '".." component' in problem or "control or format character" in problem


def test_duplicates_are_refused_even_when_allowed() -> None:
    for allow in (None, True):
        (problem,) = problems(with_paths("/var/mail/", "/var/spool/", "/var//mail", allow=allow))
        assert problem == 'p.yml:19:13: sync.paths[2].path: the same directory as sync.paths[0] ("/var/mail"); list it once'


def test_nested_paths_are_refused_unless_allowed() -> None:
    for paths in (("/var/spool/", "/var/spool/postfix/"), ("/var/spool/postfix", "/var/spool")):
        (problem,) = problems(with_paths(*paths))
        assert problem.startswith("p.yml:18:13: sync.paths[1].path: ")
        assert 'already copies "/var/spool/postfix"' in problem and "synced twice" in problem
        assert len(parse_plan(with_paths(*paths, allow=True), "p.yml").sync.paths) == 2
    assert len(parse_plan(with_paths("/var/spool/postfix/", "/var/spool/postfix-old/"), "p.yml").sync.paths) == 2


def test_system_directory_list_is_normalised() -> None:
    assert all(d == "/" or (d.startswith("/") and not d.endswith("/") and normalise_sync_path(d) == d) for d in SYSTEM_DIRECTORIES)
    assert {"/var/mail", "/var/spool", "/var/spool/postfix", "/home/alice"}.isdisjoint(SYSTEM_DIRECTORIES)


# -- lone surrogates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ('description: "x\\ud800y"\n', "p.yml:20:14: description: "),
        ('description: "\\udfff"\n', "p.yml:20:14: description: "),
        ('"\\ud800": 1\n', "p.yml:20:1: \\ud800: "),
    ],
)
def test_lone_surrogate_anywhere_is_refused(snippet: str, where: str) -> None:
    (problem,) = problems(MINIMAL + snippet)
    assert problem.startswith(where) and "lone surrogate" in problem
    problem.encode("utf-8")  # the message itself is printable


def test_lone_surrogate_in_a_nested_list() -> None:
    text = MINIMAL.replace("    - path: /var/mail/\n", '    - path: /var/mail/\n      exclude: ["ok", "\\ud83d"]\n')
    (problem,) = problems(text)
    assert problem.startswith("p.yml:18:23: sync.paths[0].exclude[1]: contains a lone surrogate")


def test_a_real_astral_character_is_fine() -> None:
    plan = parse_plan(MINIMAL + 'description: "mail \\U0001F4E7 and \U0001F4E8"\n', "p.yml")
    assert plan.description == "mail \U0001F4E7 and \U0001F4E8"


# -- timeouts > 0 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("  - reboot: true\n", "  - reboot: true\n    timeout: 0\n", "p.yml:15:14: upgrade[1].timeout: "),
        ("  - run: freebsd-update install\n", "  - run: freebsd-update install\n    timeout: 0s\n", "p.yml:14:14: upgrade[0].timeout: "),
        ("    host: mailhost.example.org\n", "    host: mailhost.example.org\n    connect_timeout: 0\n", "p.yml:8:22: ssh.prod.connect_timeout: "),
        ("takeover:\n", "validate:\n  - {name: t, tcp: {port: 22}, timeout: 0m}\ntakeover:\n", "p.yml:19:41: validate[0].timeout: "),
        ("takeover:\n", "window: {start: 2030-01-01T03:00:00, duration: 0h}\ntakeover:\n", "p.yml:18:48: window.duration: "),
    ],
)
def test_zero_durations_are_refused(old: str, new: str, where: str) -> None:
    (problem,) = problems(MINIMAL.replace(old, new))
    assert problem.startswith(where) and problem.endswith("must be longer than 0s, got 0s")


def test_other_durations_may_still_be_zero() -> None:
    plan = parse_plan(MINIMAL + "window: {start: 2030-01-01T03:00:00, duration: 1h, lead_time: 0}\n", "p.yml")
    assert plan.window is not None and plan.window.lead_time == timedelta(0)


# -- window rules that never fire ------------------------------------------------------------


def with_rule(rule: str) -> str:
    return MINIMAL + f"window:\n  duration: 2h\n  timezone: Europe/Berlin\n  rrule: {json.dumps(rule)}\n"


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY;BYMONTH=4;BYMONTHDAY=31",
        "FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=SECONDLY;BYMONTH=11;BYMONTHDAY=31",
        "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=6",
        "FREQ=DAILY;BYSETPOS=2",
        "DTSTART:20270101T030000\nRRULE:FREQ=DAILY;UNTIL=20261201T000000",
    ],
)
def test_impossible_rule_is_refused_quickly(rule: str) -> None:
    started = time.perf_counter()
    (problem,) = problems(with_rule(rule))
    assert time.perf_counter() - started < 2.5, "bounded search"
    assert problem.startswith("p.yml:23:10: window.rrule: the rule never fires in the 10 years after ")
    assert problem.endswith("fix the rule")


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("FREQ=HOURLY;BYSETPOS=2", "BYSETPOS picks nothing: each period of this rule holds only 1 occurrence(s)"),
        ("FREQ=WEEKLY;COUNT=3", "COUNT needs a DTSTART line"),
        ("FREQ=YEARLY;BYEASTER=0", "BYEASTER is a dateutil extension"),
    ],
)
def test_rules_that_cannot_be_searched_are_refused(rule: str, needle: str) -> None:
    started = time.perf_counter()
    (problem,) = problems(with_rule(rule))
    assert time.perf_counter() - started < 1
    assert problem.startswith("p.yml:23:10: window.rrule: ") and needle in problem


@pytest.mark.parametrize(
    "rule",
    [
        "DTSTART:20200105T030000\nRRULE:FREQ=WEEKLY;COUNT=3",
        "FREQ=DAILY;BYHOUR=3;UNTIL=20260301T000000",
        "DTSTART:20450101T030000\nRRULE:FREQ=WEEKLY",  # first fires more than 10 years from now
    ],
)
def test_rule_without_occurrence_from_now_is_refused_only_with_now(rule: str) -> None:
    text = with_rule(rule)
    assert isinstance(parse_plan(text, "p.yml"), Plan)  # a run in progress can still load it (rollback)
    (problem,) = problems(text, now=NOW)
    assert problem == (
        "p.yml:23:10: window.rrule: the rule has no occurrence in the 10 years from now (2026-12-01 13:00 "
        "Europe/Berlin): its COUNT or UNTIL has run out, or it can never match (like BYMONTH=2;BYMONTHDAY=30); "
        "fix or replace the rule"
    )


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
        "DTSTART:20261206T030000\nRRULE:FREQ=WEEKLY;COUNT=3",
        "DTSTART:20300101T030000\nRRULE:FREQ=MONTHLY",
        "FREQ=DAILY;BYHOUR=3;UNTIL=20270301T000000",
    ],
)
def test_rule_with_an_occurrence_passes_with_now(rule: str) -> None:
    assert parse_plan(with_rule(rule), "p.yml", now=NOW).window is not None


def test_rrule_problem_is_none_for_a_good_rule_and_fast_for_every_frequency() -> None:
    assert rrule_problem("FREQ=WEEKLY;BYDAY=SU;BYHOUR=3", "UTC", NOW) is None
    for freq in ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY"):
        started = time.perf_counter()
        assert rrule_problem(f"FREQ={freq};BYMONTH=2;BYMONTHDAY=30", "UTC", NOW) is not None
        assert time.perf_counter() - started < 2.5, freq


# -- the operator block ---------------------------------------------------------------------------

OPERATOR = """\
operator:
  email: [oncall@example.org]
  sender: upgrader@example.org
  webhook:
    url: https://hooks.example.org/upgrader
    secret_env: UPGRADER_HOOK_SECRET
"""
ANNOUNCE = "announce:\n  sender: ops@example.org\n  to: [customers@example.com]\n"
WINDOW = "window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n"  # an announce block needs one


def test_an_operator_block_is_read() -> None:
    plan = parse_plan(MINIMAL + OPERATOR, "p.yml")
    assert plan.operator is not None and plan.operator.email == ["oncall@example.org"]
    assert plan.operator.webhook is not None and plan.operator.webhook.secret_env == "UPGRADER_HOOK_SECRET"
    with_announce = parse_plan(MINIMAL + ANNOUNCE + "operator:\n  email: [oncall@example.org]\n" + WINDOW, "p.yml")
    assert with_announce.operator is not None and with_announce.operator.sender is None  # announce.sender is used


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("operator: {}\n", '20:11: operator: an operator block needs "email", "webhook" or both'),
        ("operator:\n  email: [oncall@example.org]\n",
         '21:3: operator.sender: operator mail needs a From: address: add "sender" here (or an announce block, '
         "whose sender is used)"),
        ("operator:\n  email: []\n  sender: u@example.org\n", "21:10: operator.email: needs at least 1 item, got none"),
        ("operator:\n  email: [oncall]\n  sender: u@example.org\n",
         '21:11: operator.email[0]: expected an email address like ops@example.org, got "oncall"'),
        ("operator:\n  webhook:\n    url: ftp://hooks.example.org/x\n    secret_env: S\n",
         '22:10: operator.webhook.url: must be an http:// or https:// URL, got "ftp://hooks.example.org/x"'),
        ("operator:\n  webhook:\n    url: https:///x\n    secret_env: S\n",
         '22:10: operator.webhook.url: the URL has no host: "https:///x"'),
        ("operator:\n  webhook:\n    url: 'https://hooks.example.org:99999/x'\n    secret_env: S\n",
         '22:10: operator.webhook.url: not a valid URL (Port out of range 0-65535): "https://hooks.example.org:99999/x"'),
        ("operator:\n  webhook:\n    url: https://bot:hunter2@hooks.example.org/x\n    secret_env: S\n",
         "22:10: operator.webhook.url: no user:password@ in the URL: the plan must not hold a secret; the receiver "
         "checks the X-Upgrader-Signature made with secret_env or secret_file"),
        ("operator:\n  webhook:\n    url: https://hooks.example.org/x\n    secret: hunter2\n",
         "23:13: operator.webhook.secret: a secret is never written in the plan (plans are copied, mailed and kept "
         "in run records): put it in an environment variable (secret_env) or a file (secret_file)"),
        ("operator:\n  webhook:\n    url: https://hooks.example.org/x\n",
         '22:5: operator.webhook: needs the signing secret: "secret_env" (a variable name) or "secret_file" (a path)'),
        ("operator:\n  webhook:\n    url: https://hooks.example.org/x\n    secret_env: S\n    secret_file: s.txt\n",
         '24:18: operator.webhook.secret_file: give one of "secret_env", "secret_file", not both'),
        ("operator:\n  webhook:\n    url: https://hooks.example.org/x\n    secret_env: HOOK-SECRET\n",
         '23:17: operator.webhook.secret_env: expected an environment variable name like UPGRADER_WEBHOOK_SECRET, '
         'got "HOOK-SECRET"'),
        ("operator:\n  email: [oncall@example.org]\n  smtp_host: mx\n",
         "22:3: operator.smtp_host: unknown key (allowed: email, sender, webhook)"),
    ],
)
def test_a_bad_operator_block_is_refused_with_its_position(block: str, expected: str) -> None:
    assert problems(MINIMAL + block) == [f"p.yml:{expected}"]


def test_a_customer_address_is_refused_as_an_operator_address() -> None:
    text = MINIMAL + ANNOUNCE + "operator:\n  email: [oncall@example.org, Customers@Example.com]\n" + WINDOW
    assert problems(text) == [
        "p.yml:24:31: operator.email[1]: Customers@Example.com is also in announce.to: operator notices carry error "
        "output and commands, which customers never get; use an address of the operators only"
    ]


# -- a window long enough for a cutover ---------------------------------------------------------


def test_the_shortest_window_can_hold_a_cutover(monkeypatch: pytest.MonkeyPatch) -> None:
    """MIN_CUTOVER was 30 s, the window step's slack alone: a 30-60 s window passed the checks
    and then never held a cutover (slack + 1.5 x forecast). It is now what the window step asks
    for the shortest downtime a cutover has."""
    from types import SimpleNamespace

    from upgrader.plan_checks import MIN_CUTOVER, window_problem
    from upgrader.steps import window as step
    from upgrader.window_fit import FORECAST_SLACK, SHORTEST_DOWNTIME

    monkeypatch.setattr(step, "forecast_seconds", lambda _: SHORTEST_DOWNTIME.total_seconds())
    assert step.needed(None) == MIN_CUTOVER > FORECAST_SLACK  # type: ignore[arg-type]
    window = SimpleNamespace(duration=FORECAST_SLACK + timedelta(seconds=30), rrule=None)
    found = window_problem(window, NOW)
    assert found is not None and found[0] == "duration" and "cannot take a cutover" in found[1]
    text = MINIMAL.replace("takeover:\n", "window: {start: 2030-01-01T03:00:00, duration: 1m}\ntakeover:\n")
    found_all = problems(text, now=NOW)
    assert any("window.duration: a window of 60 s cannot take a cutover: it needs at least 90 s" in p
               for p in found_all), found_all
    ok = MINIMAL.replace("takeover:\n", "window: {start: 2030-01-01T03:00:00, duration: 2m}\ntakeover:\n")
    assert parse_plan(ok, "p.yml", now=NOW).window is not None
