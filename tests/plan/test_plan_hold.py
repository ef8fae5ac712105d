"""takeover.hold (upgrader/plan_hold.py): the default is the verify checks' ports on prod itself,
[] turns the hold off, prod's SSH port and more than 32 ports are refused with a pointed problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.errors import PlanError
from upgrader.plan import parse_plan
from upgrader.plan_hold import MAX_HOLD_PORTS, describe_hold, hold_ports

MINIMAL = (Path(__file__).parent / "fixtures" / "minimal.yml").read_text()
CHECKS = """validate:
  - name: smtp
    smtp: {}
  - name: imaps
    imap: {port: 993}
  - name: elsewhere
    tcp: {port: 8080, host: monitor.example.org}
  - name: cmd
    command: {run: "true"}
  - name: web
    http: {port: 80}
  - name: smtp again
    tcp: {port: 25}
"""


def with_hold(hold: str | None, extra: str = "", ssh_port: int | None = None) -> str:
    text = MINIMAL + extra
    if hold is not None:
        text = text.replace("  production_network: prod-lan\n", f"  production_network: prod-lan\n  hold: {hold}\n")
    if ssh_port is not None:
        text = text.replace("    host: mailhost.example.org\n", f"    host: mailhost.example.org\n    port: {ssh_port}\n")
    return text


def problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plan(text, "p.yml")
    return info.value.problems


def test_default_is_the_verify_ports_on_prod_sorted_and_unique() -> None:
    plan = parse_plan(with_hold(None, CHECKS), "p.yml")
    assert plan.takeover.hold is None
    assert hold_ports(plan) == (25, 80, 993)  # not 8080: that check is on another host


def test_default_follows_verify_over_validate() -> None:
    verify = "verify:\n  - name: imap\n    imap: {}\n"
    assert hold_ports(parse_plan(with_hold(None, CHECKS + verify), "p.yml")) == (143,)


def test_default_leaves_out_the_ssh_port() -> None:
    extra = "validate:\n  - name: ssh\n    tcp: {port: 2222}\n  - name: smtp\n    smtp: {}\n"
    assert hold_ports(parse_plan(with_hold(None, extra, ssh_port=2222), "p.yml")) == (25,)


def test_no_network_check_means_no_hold() -> None:
    plan = parse_plan(with_hold(None), "p.yml")
    assert hold_ports(plan) == ()
    assert describe_hold(plan).startswith("no client hold")


def test_explicit_list_wins_and_is_deduplicated() -> None:
    plan = parse_plan(with_hold("[143, 25, 143]", CHECKS), "p.yml")
    assert hold_ports(plan) == (25, 143)
    assert "mailhost:25, 143" in describe_hold(plan)


def test_empty_list_turns_the_hold_off() -> None:
    plan = parse_plan(with_hold("[]", CHECKS), "p.yml")
    assert plan.takeover.hold == [] and hold_ports(plan) == ()


def test_ssh_port_is_refused_where_it_is() -> None:
    (problem,) = problems(with_hold("[25, 22]"))
    assert problem.startswith("p.yml:20:14: takeover.hold[1]: port 22 is prod's SSH port")
    assert "leave it out of takeover.hold" in problem


def test_ssh_port_follows_ssh_prod_port() -> None:
    (problem,) = problems(with_hold("[2222]", ssh_port=2222))
    assert "takeover.hold[0]: port 2222 is prod's SSH port" in problem
    assert hold_ports(parse_plan(with_hold("[22]", ssh_port=2222), "p.yml")) == (22,)


def test_more_than_the_cap_is_refused() -> None:
    ports = ", ".join(str(p) for p in range(1000, 1001 + MAX_HOLD_PORTS))
    (problem,) = problems(with_hold(f"[{ports}]"))
    assert f"takeover.hold: {MAX_HOLD_PORTS + 1} ports, at most {MAX_HOLD_PORTS}" in problem
    at_cap = ", ".join(str(p) for p in range(1000, 1000 + MAX_HOLD_PORTS))
    assert len(hold_ports(parse_plan(with_hold(f"[{at_cap}]"), "p.yml"))) == MAX_HOLD_PORTS


@pytest.mark.parametrize("bad", ["[0]", "[65536]", '["smtp"]', "25"])
def test_not_a_port_list_is_refused(bad: str) -> None:
    (problem,) = problems(with_hold(bad))
    assert "takeover.hold" in problem
