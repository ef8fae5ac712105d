"""The client hold on the fake hypervisor (upgrader/testing/fake_client_hold.py) is as strict as
libvirt's nwfilter: live only, refused on a stopped domain / unknown NIC / a NIC with its own
filter / an undefined filter, idempotent, every change an effect, dropped when the domain stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.errors import InfraError
from upgrader.ports import HOLD_PREFIX, client_hold_name
from upgrader.testing.fakes import FakeHypervisor, WorldFile, new_world

MAC = "52:54:00:12:34:56"
NAME = client_hold_name("20261202T0800Z-abc")


@pytest.fixture
def hv(tmp_path: Path) -> FakeHypervisor:
    world = WorldFile(tmp_path / "world.json")
    world.write(new_world())
    return FakeHypervisor(world)


def ops(hv: FakeHypervisor) -> list[str]:
    return [e["op"] for e in hv.world.read()["effects"]]


def test_name_carries_the_prefix() -> None:
    assert NAME == "upgrader-hold-20261202T0800Z-abc" and NAME.startswith(HOLD_PREFIX)


def test_hold_and_release_round_trip_idempotent(hv: FakeHypervisor) -> None:
    hv.define_client_hold(NAME, [143, 25])
    hv.define_client_hold(NAME, [25, 143])  # the same: no change
    assert hv.client_hold_filters() == [NAME]
    hv.hold_clients("mailhost", MAC, NAME)
    hv.hold_clients("mailhost", MAC, NAME)
    assert hv.client_holds("mailhost") == {MAC: NAME}
    hv.release_clients("mailhost", MAC)
    hv.release_clients("mailhost", MAC)
    hv.undefine_client_hold(NAME)
    hv.undefine_client_hold(NAME)
    assert hv.client_holds("mailhost") == {} and hv.client_hold_filters() == []
    assert ops(hv) == ["define_client_hold", "hold_clients", "release_clients", "undefine_client_hold"]
    world = hv.world.read()
    assert world["nwfilters"] == {} and world["client_holds"] == {}


def test_refused_on_a_stopped_domain_an_unknown_nic_or_an_undefined_filter(hv: FakeHypervisor) -> None:
    with pytest.raises(InfraError, match="not defined"):
        hv.hold_clients("mailhost", MAC, NAME)
    hv.define_client_hold(NAME, [25])
    with pytest.raises(InfraError, match="no NIC"):
        hv.hold_clients("mailhost", "52:54:00:00:00:01", NAME)
    with pytest.raises(InfraError, match="not found"):
        hv.hold_clients("nosuch", MAC, NAME)
    hv.destroy("mailhost")
    with pytest.raises(InfraError, match="not running"):
        hv.hold_clients("mailhost", MAC, NAME)
    assert "hold_clients" not in ops(hv)


def test_a_nic_with_its_own_filter_is_refused_and_left_alone(hv: FakeHypervisor) -> None:
    with hv.world.change() as world:
        world["client_holds"] = {"mailhost": {MAC: "clean-traffic"}}
    hv.define_client_hold(NAME, [25])
    with pytest.raises(InfraError, match="clean-traffic") as info:
        hv.hold_clients("mailhost", MAC, NAME)
    assert info.value.hint and "takeover.hold: []" in info.value.hint
    assert hv.client_holds("mailhost") == {}  # not ours: not a hold
    hv.release_clients("mailhost", MAC)  # not ours: left alone
    assert hv.world.read()["client_holds"] == {"mailhost": {MAC: "clean-traffic"}}


def test_another_runs_hold_is_refused(hv: FakeHypervisor) -> None:
    other = client_hold_name("other")
    hv.define_client_hold(other, [25])
    hv.define_client_hold(NAME, [25])
    hv.hold_clients("mailhost", MAC, other)
    with pytest.raises(InfraError, match=other):
        hv.hold_clients("mailhost", MAC, NAME)


def test_a_filter_in_use_cannot_be_undefined(hv: FakeHypervisor) -> None:
    hv.define_client_hold(NAME, [25])
    hv.hold_clients("mailhost", MAC, NAME)
    with pytest.raises(InfraError, match="in use by mailhost"):
        hv.undefine_client_hold(NAME)


def test_the_hold_is_live_only_a_restart_comes_back_unheld(hv: FakeHypervisor) -> None:
    hv.define_client_hold(NAME, [25])
    hv.hold_clients("mailhost", MAC, NAME)
    hv.destroy("mailhost")
    assert hv.client_holds("mailhost") == {}
    hv.release_clients("mailhost", MAC)  # off: a no-op
    hv.start("mailhost")
    assert hv.client_holds("mailhost") == {}
    hv.undefine_client_hold(NAME)  # nothing references it any more
    assert hv.client_hold_filters() == []


def test_libvirt_down_raises(hv: FakeHypervisor) -> None:
    with hv.world.change() as world:
        world["faults"].append("libvirt")
    for call in (lambda: hv.client_holds("mailhost"), hv.client_hold_filters, lambda: hv.define_client_hold(NAME, [25])):
        with pytest.raises(InfraError, match="libvirt"):
            call()
