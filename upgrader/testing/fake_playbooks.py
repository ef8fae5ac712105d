"""The fake PlaybookRunner: canned playbook runs in the world (`world["playbooks"]`), so an
`ansible:` step can be tested on the fakes, crash tests included. Strict like the fake shell: a
playbook nobody canned raises UnexpectedPlaybook (an AssertionError, never a step failure).

A canned entry: `match` (regex on the playbook's resolved path), optional `rc` (ansible-playbook's
exit code, 0), `recap` (counts of the host's PLAY RECAP line: ok, changed, failed, ...; default
{"ok": 1}), `output` (lines streamed to the step; `{field}` is formatted from the guest),
`set` (guest fields changed when it ran), `unreachable: N` (the first N runs lose the twin
half-way: ConnectionLost after `set` took effect), `host_key: true` (the twin's key is not the
pinned one: HostKeyError, nothing runs). The fault `ansible` makes `check` fail as if ansible-core
were not installed. Every run is an effect `playbook` (role, domain, path,
tags, extra_vars, proxy). `expect_plan(world, plan)` cans the plan's playbooks (rc 0)."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from upgrader.adapters.ansible_runner import AnsibleMissing
from upgrader.adapters.fabric_shell import HostKeyError
from upgrader.errors import ConnectionLost
from upgrader.ports import HostRecap, OutputSink, PackageProxy, Playbook, PlaybookResult, Result
from upgrader.testing.fakes import WorldFile, _guest_of
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import effect

__all__ = ["FakePlaybooks", "UnexpectedPlaybook"]


class UnexpectedPlaybook(AssertionError):
    def __init__(self, role: str, path: str, patterns: list[str]) -> None:
        canned = "\n".join(f"  {p}" for p in patterns) or "  (none)"
        super().__init__(f"fake playbook runner on {role}: unexpected playbook {path}: no canned entry in "
                         f"world['playbooks'] (expect_plan(world, plan) cans the plan's own). Canned:\n{canned}")


class FakePlaybooks:
    def __init__(self, world: WorldFile, networks: dict[str, str], domain: str = "twin") -> None:
        self.world, self.networks, self.domain = world, networks, domain

    def check(self) -> str:
        if "ansible" in self.world.read()["faults"]:
            raise AnsibleMissing("fake: ansible-playbook is not installed (fault)")  # hint: the real one's
        return "fake ansible-playbook"

    def run_playbook(self, role: str, playbook: Playbook, *, workdir: Path, timeout: float,
                     proxy: PackageProxy | None = None, on_output: OutputSink | None = None) -> PlaybookResult:
        path = str(playbook.path)
        maybe_pause(f"before:playbook:{playbook.path.name}")
        with self.world.change() as world:
            domain, guest = _guest_of(world, self.networks[role])
            entries = world.setdefault("playbooks", [])
            canned = next((e for e in entries if re.search(e["match"], path)), None)
            if canned is None:
                effect(world, "unexpected_playbook", role=role, domain=domain, path=path)
                unexpected: UnexpectedPlaybook | None = UnexpectedPlaybook(role, path, [e["match"] for e in entries])
            else:
                unexpected = None
                if canned.get("host_key"):
                    effect(world, "playbook_refused", role=role, domain=domain, path=path)
                else:
                    guest.update(canned.get("set", {}))
                    lost = int(canned.get("unreachable", 0)) > int(canned.get("was_unreachable", 0))
                    if lost:
                        canned["was_unreachable"] = int(canned.get("was_unreachable", 0)) + 1
                    effect(world, "playbook", role=role, domain=domain, path=path, tags=list(playbook.tags),
                           extra_vars=dict(playbook.extra_vars), proxy=asdict(proxy) if proxy else None,
                           workdir=str(workdir), lost=lost)
        if unexpected is not None:
            raise unexpected
        assert canned is not None
        if canned.get("host_key"):
            raise HostKeyError(f"fake: the host key of {role} is not the pinned one; refused")
        if lost:
            raise ConnectionLost(f"fake: ansible-playbook: {role} became unreachable")
        output = str(canned.get("output", "")).format(**guest)
        for line in output.splitlines():
            if on_output is not None:
                on_output(line)
        recap = HostRecap(self.domain, **canned.get("recap", {"ok": 1}))
        maybe_pause(f"after:playbook:{playbook.path.name}")
        return PlaybookResult(Result(f"ansible-playbook {path}", int(canned.get("rc", 0)), output), (recap,))

    def runs(self) -> list[dict[str, Any]]:
        return [e for e in self.world.read()["effects"] if e["op"] == "playbook"]
