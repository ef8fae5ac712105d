"""Which probe tells the cutover that the service is back (steps/service_probe.py)."""

from __future__ import annotations

from upgrader.plan import Plan, parse_plan
from upgrader.ports import Probe
from upgrader.steps.service_probe import service_probe
from upgrader.testing.scenario import FAKE_PLAN


def _plan(verify: str) -> Plan:
    return parse_plan(FAKE_PLAN.format(world="/nonexistent", keep="1h") + verify, "fake.yml")


def test_an_http_service_is_asked_for_its_status_line_not_a_bare_connect() -> None:
    # through a ProxyCommand a connect hanging on a held SYN looks like one that worked
    plan = _plan("verify:\n  - name: web\n    http: {port: 8080, path: /health, status: 204}\n")
    assert service_probe(plan, timeout=30) == Probe(kind="http", port=8080, path="/health", status=204, timeout=30)


def test_a_check_on_another_host_does_not_name_the_service_port() -> None:
    plan = _plan("verify:\n  - name: relay\n    smtp: {port: 2525, host: relay.example.org}\n"
                 "  - name: imap\n    imap: {port: 143}\n")
    assert service_probe(plan) == Probe(kind="imap", port=143, timeout=120.0)


def test_no_network_check_no_probe() -> None:
    plan = _plan("verify:\n  - name: release\n    command: {run: cat /etc/labos-release}\n")
    assert service_probe(plan) is None


def test_without_verify_the_validate_list_counts() -> None:
    assert service_probe(_plan("")) == Probe(kind="smtp", port=25, timeout=120.0)
