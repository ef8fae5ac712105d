"""staging.packages: the package proxy the isolated twin reaches through upgrader's remote forward
(upgrader/plan_packages.py). Broken values are in fixtures/broken/packages_*.yml."""

from __future__ import annotations

import pytest

from upgrader.errors import PlanError
from upgrader.plan import parse_plan
from upgrader.plan_packages import package_env
from upgrader.ports import RemoteForward

PLAN = """\
version: 1
source: {{libvirt_uri: "qemu:///system", domain: mailhost}}
ssh:
  prod: {{host: mailhost.example.org}}
  staging: {{host: 192.0.2.25}}
staging:
  network: staging-isolated
{packages}upgrade:
  - run: apt-get update
sync:
  paths: [{{path: /var/mail/}}]
takeover: {{production_network: prod-lan}}
"""


def plan(packages: str = ""):  # type: ignore[no-untyped-def]
    return parse_plan(PLAN.format(packages=packages), "plan.yml")


def test_no_proxy_by_default() -> None:
    loaded = plan()
    assert loaded.staging.packages is None
    assert package_env(loaded) == {}


def test_proxy_port_is_the_twins_port_by_default() -> None:
    proxy = plan('  packages: {proxy: "http://127.0.0.1:3142"}\n').staging.packages
    assert proxy is not None
    assert (proxy.proxy_host, proxy.proxy_port, proxy.twin_port) == ("127.0.0.1", 3142, 3142)
    assert proxy.twin_url == "http://127.0.0.1:3142"
    assert proxy.forward == RemoteForward(listen_port=3142, host="127.0.0.1", port=3142)
    assert proxy.env == {"http_proxy": "http://127.0.0.1:3142", "HTTP_PROXY": "http://127.0.0.1:3142",
                         "UPGRADER_PACKAGE_PROXY": "http://127.0.0.1:3142",
                         "no_proxy": "localhost,127.0.0.1,::1", "NO_PROXY": "localhost,127.0.0.1,::1"}


def test_own_port_on_the_twin_and_default_http_port() -> None:
    loaded = plan('  packages: {proxy: "http://cache.lan/", port: 8080}\n')
    proxy = loaded.staging.packages
    assert proxy is not None
    assert proxy.forward == RemoteForward(listen_port=8080, host="cache.lan", port=80)
    assert package_env(loaded)["http_proxy"] == "http://127.0.0.1:8080"
    assert "127.0.0.1:8080" in proxy.describe() and "cache.lan:80" in proxy.describe()


def test_ipv6_proxy_host() -> None:
    proxy = plan('  packages: {proxy: "http://[::1]:3142"}\n').staging.packages
    assert proxy is not None and proxy.forward == RemoteForward(3142, "::1", 3142)
    assert "[::1]:3142" in proxy.describe()


@pytest.mark.parametrize(("value", "message"), [
    ('"ftp://mirror:21"', "must be an http:// URL"),
    ('"http://:3142"', "the URL has no host"),
    ('"http://127.0.0.1:3142/debian"', "a proxy URL has no path"),
    ('"http://127.0.0.1:99999"', "not a valid URL"),
    ('"http://127.0.0.1 :3142"', "whitespace"),
    ("3142", "expected a string"),
])
def test_bad_proxy_urls(value: str, message: str) -> None:
    with pytest.raises(PlanError) as info:
        plan(f"  packages: {{proxy: {value}}}\n")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("plan.yml:8:")
    assert "staging.packages.proxy: " in info.value.problems[0] and message in info.value.problems[0]


def test_port_must_be_an_integer() -> None:
    with pytest.raises(PlanError) as info:
        plan('  packages: {proxy: "http://127.0.0.1:3142", port: "3142"}\n')
    assert info.value.problems == ['plan.yml:8:52: staging.packages.port: expected an integer, got "3142"']
