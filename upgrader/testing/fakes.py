"""Fakes behind the ports, for fast tests. Chosen through the plan: `source.libvirt_uri:
fake:///abs/path/world.json`. The world lives in that JSON file so it survives the process
being killed (the crash tests kill the orchestrator and resume in a new process).

Every side effect is appended to `effects` so a test can assert it happened exactly once.
Fakes fail loudly: an unknown domain, an unsafe merge or a command the shell was not told about
(fake_commands.UnexpectedCall: no canned entry, none of upgrader's own guest commands) raises.

The world (its shape, the file, the helpers every fake shares) is in upgrader/testing/world.py;
checkpoints of the fake hypervisor in fake_checkpoints.py, its client hold in fake_client_hold.py.
"""

from __future__ import annotations

import copy
import re
import uuid as uuidlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from upgrader.errors import CheckFailed, ConnectionLost, ForwardRefused, InfraError, StepFailed, UnsafeOperation
from upgrader.ports import Claim, Command, DomainInfo, OutputSink, Probe, Prompt, RemoteForward, Result, SnapshotInfo
from upgrader.steps.base import Ports
from upgrader.steps.guest import IS_MARKED_TEMPLATE
from upgrader.testing.fake_checkpoints import FakeCheckpoints, collect_checkpoints
from upgrader.testing.fake_client_hold import FakeClientHold, drop_live_holds
from upgrader.testing.fake_commands import UnexpectedCall, UnexpectedForward, canned_for, own_command
from upgrader.testing.fake_nics import FakeNics, back_to_definition
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import DEFAULT_FREE_MEMORY, DEFAULT_MEMORY, World, WorldFile, chains_of, domain_of, effect, is_used, new_world

if TYPE_CHECKING:
    from upgrader.plan import Plan

__all__ = ["FakeHypervisor", "FakeProber", "FakeShell", "FakeShells", "UnexpectedCall", "UnexpectedForward",
           "World", "WorldFile", "build", "new_world"]


def _guest_of(world: World, role_network: str) -> tuple[str, dict[str, Any]]:
    for name, dom in world["domains"].items():
        if dom["running"] and any(net == role_network and dom["links"].get(mac, True) for mac, net in dom["nics"].items()):
            return name, world["guests"][dom["guest"]]
    raise InfraError(f"fake: nothing answers on {role_network}", hint="is the domain running and linked?")


# ---------------------------------------------------------------------------------- hypervisor


class FakeHypervisor(FakeCheckpoints, FakeClientHold, FakeNics):
    def __init__(self, world: WorldFile) -> None:
        self.world = world

    def _read(self) -> World:
        """The world, as libvirt would answer: not at all under the fault "libvirt"."""
        world = self.world.read()
        if "libvirt" in world["faults"]:
            raise InfraError("fake: cannot connect to libvirt (fault)", hint="is libvirtd running and the URI right?")
        return world

    def check(self) -> str:
        return str(self._read()["hypervisor"])

    def domain(self, name: str) -> DomainInfo | None:
        dom = self._read()["domains"].get(name)
        if dom is None:
            return None
        return DomainInfo(name, dom["uuid"], dom["running"], dict(dom["disks"]), dict(dom["nics"]), dict(dom["links"]),
                          memory=int(dom.get("memory", DEFAULT_MEMORY)))

    def free_bytes(self, directory: str) -> int:
        return int(self.world.read()["free_bytes"])

    def free_memory(self) -> int:
        return int(self._read().get("free_memory", DEFAULT_FREE_MEMORY))

    def snapshot(self, domain: str, name: str, directory: str | None) -> SnapshotInfo:
        with self.world.change() as world:
            dom = domain_of(world, domain)
            overlays, bases = {}, {}
            for target, base in dom["disks"].items():
                overlay = f"{base.rsplit('.', 1)[0]}.{name}.qcow2"
                if overlay in world["images"]:
                    raise StepFailed(f"fake: overlay {overlay} exists already")
                world["images"][overlay] = {"size": 196608, "backing": base}
                dom["disks"][target] = overlay
                overlays[target], bases[target] = overlay, base
            world.setdefault("snapshots", {})[name] = {
                "domain": domain,
                "overlays": overlays,
                "bases": bases,
                "guest": copy.deepcopy(world["guests"][dom["guest"]]),
            }
            effect(world, "snapshot", domain=domain, name=name)
        maybe_pause("after:snapshot")
        return SnapshotInfo(name, overlays, bases)

    def find_snapshot(self, domain: str, name: str) -> SnapshotInfo | None:
        world = self.world.read()
        snap = world.get("snapshots", {}).get(name)
        if snap is None or snap["domain"] != domain:
            return None
        if any(world["domains"][domain]["disks"].get(t) != o for t, o in snap["overlays"].items()):
            return None
        return SnapshotInfo(name, dict(snap["overlays"]), dict(snap["bases"]))

    def clone(self, source: str, twin: str, snapshot: SnapshotInfo, network: str,
              macs: dict[str, str] | None = None) -> DomainInfo:
        """Like libvirt: the overlays are created first, the domain defined after — a crash in
        between leaves orphan overlays (remove_orphans deals with them)."""
        disks = {}
        with self.world.change() as world:
            if twin in world["domains"]:
                raise StepFailed(f"fake: domain {twin} exists already")
            domain_of(world, source)
            for target, base in snapshot.bases.items():
                overlay = f"{base.rsplit('.', 1)[0]}.{twin}.qcow2"
                if overlay in world["images"]:
                    raise StepFailed(f"fake: overlay {overlay} exists already")
                world["images"][overlay] = {"size": 196608, "backing": base}
                disks[target] = overlay
        maybe_pause("after:clone_overlays")
        with self.world.change() as world:
            src = domain_of(world, source)
            snap = world["snapshots"][snapshot.name]
            guest_id = f"g{len(world['guests'])}"
            world["guests"][guest_id] = copy.deepcopy(snap["guest"])
            world["domains"][twin] = {
                "uuid": str(uuidlib.uuid4()),
                "running": False,
                "disks": disks,
                "nics": {(macs or {}).get(mac, mac): network for mac in src["nics"]},
                "links": {(macs or {}).get(mac, mac): True for mac in src["nics"]},
                "guest": guest_id,
                "claim": copy.deepcopy(src.get("claim")),  # like libvirt: <metadata> comes with the XML
                "autostart": False,  # like libvirt: host-level, not in the XML a clone copies
            }
            effect(world, "clone", source=source, twin=twin)
        maybe_pause("after:clone")
        info = self.domain(twin)
        assert info is not None
        return info

    def start(self, name: str) -> None:
        with self.world.change() as world:
            dom = domain_of(world, name)
            if dom["running"]:
                raise StepFailed(f"fake: {name} is running already")
            dom["running"] = True
            world["guests"][dom["guest"]]["boot_id"] = str(uuidlib.uuid4())
            effect(world, "start", domain=name)
        maybe_pause("after:start")

    def destroy(self, name: str) -> None:
        with self.world.change() as world:
            dom = domain_of(world, name)
            if dom["running"]:
                dom["running"] = False
                back_to_definition(dom)  # live NIC changes not persisted are gone, as in libvirt
                drop_live_holds(world, name)
                effect(world, "destroy", domain=name)
        maybe_pause(f"after:destroy:{name}")

    def undefine(self, name: str) -> int:
        with self.world.change() as world:
            dom = domain_of(world, name)
            if dom["running"]:
                raise StepFailed(f"fake: {name} is running; destroy it first")
            chains = chains_of(world, name)
            del world["domains"][name]
            effect(world, "undefine", domain=name)
        maybe_pause("after:undefine_domain")  # like libvirt: the domain is gone, its images not yet
        with self.world.change() as world:  # its checkpoint overlays, and a killed revert's leftovers on the chain
            freed = collect_checkpoints(world, name)
        freed += self.delete_unused(chains)
        maybe_pause("after:undefine")
        return freed

    def disk_chains(self, name: str) -> list[list[str]]:
        world = self.world.read()
        return chains_of(world, name) if name in world["domains"] else []

    def delete_unused(self, chains: list[list[str]]) -> int:
        with self.world.change() as world:
            return _delete_unused_chains(world, chains)

    def remove_orphans(self, owner: str, bases: dict[str, str]) -> int:
        with self.world.change() as world:
            freed = collect_checkpoints(world, owner)  # they sit on the overlay: they go first
            for base in bases.values():
                path = f"{base.rsplit('.', 1)[0]}.{owner}.qcow2"
                if path in world["images"] and not is_used(world, path):
                    freed += world["images"].pop(path)["size"]
                    effect(world, "remove_orphan", path=path)
            return freed

    def merge_back(self, domain: str, snapshot: SnapshotInfo) -> int:
        with self.world.change() as world:
            dom = domain_of(world, domain)
            freed, merged, pivoted = 0, False, []
            for target, overlay in snapshot.overlays.items():
                base = snapshot.bases[target]
                users = [p for p, img in world["images"].items() if img["backing"] == base and p != overlay]
                if users:
                    raise UnsafeOperation(f"fake: refusing to commit {overlay} into {base}: {users[0]} depends on it")
                if dom["disks"].get(target) == base:  # merged already: only a leftover overlay to delete
                    unused = not any(img["backing"] == overlay for img in world["images"].values())
                    freed += world["images"].pop(overlay)["size"] if overlay in world["images"] and unused else 0
                    continue
                if dom["disks"].get(target) != overlay:
                    raise StepFailed(f"fake: {domain} {target} is not on {overlay}")
                dom["disks"][target] = base  # the block commit's pivot
                pivoted.append(overlay)
                merged = True
            if merged:  # (a call that found it merged already is not a second merge)
                effect(world, "merge_back", domain=domain)
        maybe_pause("during:merge_back")  # pivoted, the overlay not yet deleted (a race found on the lab)
        with self.world.change() as world:
            for overlay in pivoted:
                freed += world["images"].pop(overlay)["size"]
        maybe_pause("after:merge_back")
        return freed

    def flatten(self, domain: str) -> None:
        self.merge_checkpoints(domain)  # like the adapter: no checkpoint image is stranded
        with self.world.change() as world:
            dom = domain_of(world, domain)
            changed = False
            for path in dom["disks"].values():
                image = world["images"][path]
                while image["backing"]:
                    base = world["images"][image["backing"]]
                    image["size"] += base["size"]
                    image["backing"] = base["backing"]
                    changed = True
            if changed:  # like blockpull on a flat image: nothing to do, nothing happens
                effect(world, "flatten", domain=domain)
        maybe_pause("after:flatten")

    def claim_of(self, domain: str) -> Claim | None:
        dom = self._read()["domains"].get(domain)
        claim = dom.get("claim") if dom else None
        return Claim(**claim) if claim else None

    def set_claim(self, domain: str, claim: Claim | None) -> None:
        self._read()
        with self.world.change() as world:
            domain_of(world, domain)["claim"] = asdict(claim) if claim else None
            effect(world, "set_claim" if claim else "release_claim", domain=domain)
        maybe_pause(f"after:{'set' if claim else 'release'}_claim:{domain}")

    def autostart(self, name: str) -> bool:
        """Like libvirt: a host-level flag, not part of the definition a clone copies."""
        return bool(domain_of(self.world.read(), name).get("autostart", False))

    def set_autostart(self, name: str, on: bool) -> None:
        with self.world.change() as world:
            domain_of(world, name)["autostart"] = on
            effect(world, "set_autostart", domain=name, on=on)
        maybe_pause(f"after:set_autostart:{name}")


def _delete_unused_chains(world: World, chains: list[list[str]]) -> int:
    """Delete images down each chain until one is used by a domain or as a backing file."""
    freed = 0
    for chain in chains:
        for path in chain:
            if path not in world["images"]:
                continue
            used_by_domain = any(path in d["disks"].values() for d in world["domains"].values())
            used_as_backing = any(img["backing"] == path for img in world["images"].values())
            if used_by_domain or used_as_backing:
                break
            freed += world["images"].pop(path)["size"]
    return freed


# --------------------------------------------------------------------------------------- shell


def _forward_dict(forward: RemoteForward) -> dict[str, Any]:
    return {"listen_port": forward.listen_port, "host": forward.host, "port": forward.port}


def live_forwards(world: World, role: str, session: str) -> list[dict[str, Any]]:
    """The forwards open on `role`'s connection of this process (`session`): a forward of a process
    that died died with its SSH connection (world["forwards"] keeps it only as a record)."""
    return [{k: f[k] for k in ("listen_port", "host", "port")} for f in world.get("forwards", [])
            if f["role"] == role and f["session"] == session]


class FakeShell:
    def __init__(self, world: WorldFile, role: str, network: str, session: str = "",
                 factory: "FakeShells | None" = None) -> None:
        self.world, self.name, self.network, self.session, self.factory = world, role, network, session, factory

    def _replaced(self) -> None:
        """This role's connection died: the next command runs on a new one (FabricShell.ensure)."""
        if self.factory is not None:
            self.factory.replace_connection(self.name)

    def run(
        self,
        command: Command,
        *,
        timeout: float = 600,
        prompts: Sequence[Prompt] = (),
        env: dict[str, str] | None = None,
        on_output: OutputSink | None = None,
        mark: str | None = None,
    ) -> Result:
        line = command.line
        maybe_pause(f"before:run:{line}")
        unexpected: UnexpectedCall | None = None
        with self.world.change() as world:
            domain, guest = _guest_of(world, self.network)
            if command.template == IS_MARKED_TEMPLATE:
                return Result(command.masked(), 0 if command.args[-1] in guest["files"] else 1)
            rc, stdout, cut = 0, "", False
            canned: dict[str, Any] | None = None
            for entry in world["commands"]:
                if re.search(entry["match"], line) and entry.get("role", self.name) == self.name:
                    if int(entry.get("cut", 0)) > int(entry.get("was_cut", 0)):  # lost before it ran
                        entry["was_cut"] = int(entry.get("was_cut", 0)) + 1
                        cut = True
                        break
                    # `stale: N`: the first N matching runs find the connection dead and reconnect
                    # quietly first (FabricShell.ensure), so the command runs on a new connection
                    if int(entry.get("stale", 0)) > int(entry.get("was_stale", 0)):
                        entry["was_stale"] = int(entry.get("was_stale", 0)) + 1
                        self._replaced()
                        effect(world, "reconnect", role=self.name, domain=domain)
                    canned = entry
                    rc, stdout = int(canned.get("rc", 0)), str(canned.get("stdout", "")).format(**guest)
                    guest.update(canned.get("set", {}))
                    for n in range(int(canned.get("add_mail", 0))):  # clients write while it serves
                        guest["mail"].append(f"after-{domain}-{len(guest['mail'])}-{n}")
                    break
            else:  # no canned entry: one of upgrader's own commands, or a call nobody told the fake about
                own = own_command(command, self.name, guest)
                if own is None:
                    unexpected = UnexpectedCall(self.name, command.masked(), canned_for(world["commands"], self.name))
                    effect(world, "unexpected_run", role=self.name, domain=domain, cmd=line)
                else:
                    rc, stdout = own
            lost = cut
            if unexpected is None and not cut:
                if mark and rc == 0:
                    guest["files"].append(mark)
                extra: dict[str, Any] = {}
                if forwards := live_forwards(world, self.name, self.session):  # what the command could reach
                    extra["forwards"] = forwards
                if env:
                    extra["env"] = dict(env)
                effect(world, "run", role=self.name, domain=domain, cmd=line, rc=rc, prompts=len(prompts), **extra)
                # `drop: N`: the first N matching runs lose the connection after the command ran
                if canned is not None and int(canned.get("drop", 0)) > int(canned.get("dropped", 0)):
                    canned["dropped"] = int(canned.get("dropped", 0)) + 1
                    lost = True
        if unexpected is not None:
            raise unexpected
        if lost:
            self._replaced()
            raise ConnectionLost(f"fake: connection to {self.name} lost while running `{command.short()}`")
        if on_output and stdout:
            for out in stdout.splitlines():
                on_output(out)
        maybe_pause(f"after:run:{line}")
        maybe_pause(f"after:run@{self.name}:{line}")  # the same point, by role (the twin rehearses prod's commands)
        return Result(command.masked(), rc, stdout)

    def boot_id(self) -> str:
        _, guest = _guest_of(self.world.read(), self.network)
        return str(guest["boot_id"])

    def reboot(self, *, timeout: float) -> str:
        with self.world.change() as world:
            domain, guest = _guest_of(world, self.network)
            if f"reboot:{self.name}" in world["faults"]:
                effect(world, "reboot", role=self.name, domain=domain, came_back=False)
                raise StepFailed(f"fake: {self.name} did not come back with a new boot id within {timeout:.0f} s after reboot")
            guest["boot_id"] = str(uuidlib.uuid4())
            effect(world, "reboot", role=self.name, domain=domain)
        maybe_pause("after:reboot")
        return str(guest["boot_id"])

    def forward(self, forward: RemoteForward) -> None:
        """A forward the test expects (world["expected_forwards"]: `expect_plan` adds the plan's
        package proxy) opens, recorded per process (`session`); any other raises UnexpectedForward.
        Fault `forward:ROLE`: the guest's sshd refuses it (ForwardRefused)."""
        wanted, refused = _forward_dict(forward), False
        with self.world.change() as world:
            domain, _ = _guest_of(world, self.network)
            if wanted not in world.get("expected_forwards", []):
                effect(world, "unexpected_forward", role=self.name, **wanted)
                unexpected = True
            else:
                unexpected = False
                refused = f"forward:{self.name}" in world["faults"]
                effect(world, "forward", role=self.name, domain=domain, refused=refused, **wanted)
                if not refused:
                    opened = world.setdefault("forwards", [])
                    opened[:] = [f for f in opened if not (f["role"] == self.name and f["listen_port"] == forward.listen_port)]
                    opened.append({"role": self.name, "session": self.session, **wanted})
        if unexpected:
            raise UnexpectedForward(self.name, forward.describe(), world.get("expected_forwards", []))
        if refused:
            raise ForwardRefused(f"fake: {self.name} refused a remote forward on its 127.0.0.1:{forward.listen_port} "
                                 f"(fault forward:{self.name})")

    def unforward(self, forward: RemoteForward) -> None:
        with self.world.change() as world:
            opened = world.setdefault("forwards", [])
            kept = [f for f in opened if not (f["role"] == self.name and f["listen_port"] == forward.listen_port
                                              and f["session"] == self.session)]
            if len(kept) != len(opened):
                effect(world, "unforward", role=self.name, **_forward_dict(forward))
            opened[:] = kept

    def close(self) -> None:
        pass


class FakeShells:
    def __init__(self, world: WorldFile, networks: dict[str, str]) -> None:
        self.world, self.networks = world, networks
        self.session = uuidlib.uuid4().hex  # this process's connections: its forwards die with it
        self.replaced: dict[str, int] = {}  # role -> how often its connection died or was dropped in this process

    def connection(self, role: str) -> str:
        """The identity of `role`'s current connection (like a paramiko Transport): a sync
        session's tunnel lives on the connections it was opened on (FakeSyncer)."""
        return f"{self.session}/{role}/{self.replaced.get(role, 0)}"

    def replace_connection(self, role: str) -> None:
        self.replaced[role] = self.replaced.get(role, 0) + 1

    def connect(self, role: str, *, wait: float | None = None) -> FakeShell:
        if f"ssh:{role}" in self.world.read()["faults"]:
            raise InfraError(f"fake: SSH to {role} does not answer (fault)")
        shell = FakeShell(self.world, role, self.networks[role], self.session, self)
        shell.boot_id()  # fails like SSH would when nothing answers
        return shell

    def reset(self) -> None:
        with self.world.change() as world:  # recorded: tests check takeover forgets connections
            effect(world, "reset_connections")
            opened = world.setdefault("forwards", [])  # their forwards went with them
            opened[:] = [f for f in opened if f["session"] != self.session]
        for role in self.networks:
            self.replace_connection(role)


# -------------------------------------------------------------------------------------- probing


class FakeProber:
    def __init__(self, world: WorldFile, networks: dict[str, str]) -> None:
        self.world, self.networks = world, networks

    def probe(self, role: str, probe: Probe) -> str:
        world = self.world.read()
        if f"probe:{role}" in world["faults"]:
            raise CheckFailed(f"fake: {probe.kind} port {probe.port} on {role}: connection refused (fault)")
        try:
            _, guest = _guest_of(world, self.networks[role])
        except InfraError as exc:
            raise CheckFailed(exc.message) from exc
        if not guest["services"]:
            raise CheckFailed(f"fake: {probe.kind} port {probe.port} on {role}: connection refused")
        seen = {"smtp": "220 fake ESMTP", "imap": "* OK [CAPABILITY IMAP4rev1] fake IMAP ready",
                "http": "HTTP/1.1 200 OK", "tcp": "open"}[probe.kind]
        if probe.expect and probe.kind in ("smtp", "imap") and not re.search(probe.expect, seen):
            raise CheckFailed(f"fake: banner {seen!r} does not match /{probe.expect}/")
        return seen

    def wait_answers(self, role: str, probe: Probe, *, interval: float = 0.05, connect_timeout: float = 0.2) -> str:
        """The world does not change while a fake waits: one look, journaled as effect `wait_answers`
        (so a test sees which wait a step used). Unusable timings are a caller bug: they raise."""
        if not (0 < interval <= 1 and 0 < connect_timeout <= probe.timeout):
            raise ValueError(f"fake: wait_answers(interval={interval}, connect_timeout={connect_timeout}) for a {probe.timeout} s probe")
        with self.world.change() as world:
            effect(world, "wait_answers", role=role, kind=probe.kind, port=probe.port, interval=interval, connect_timeout=connect_timeout)
        return self.probe(role, probe)


def build(plan: "Plan", run_id: str = "fake-run") -> Ports:
    path = Path(plan.source.libvirt_uri.removeprefix("fake://"))
    if not path.is_absolute():
        path = plan.resolve_path(str(path))
    if not path.exists():
        raise InfraError(f"fake world {path} does not exist", hint="tests create it with upgrader.testing.fakes.new_world()")
    world = WorldFile(path)
    networks = {"prod": plan.takeover.production_network, "staging": plan.staging.network}
    from upgrader.testing.fake_playbooks import FakePlaybooks  # they build on this module's guests
    from upgrader.testing.fake_syncer import FakeSyncer

    shells = FakeShells(world, networks)
    return Ports(FakeHypervisor(world), shells, FakeSyncer(world, networks, run_id, shells), FakeProber(world, networks),
                 playbooks=FakePlaybooks(world, networks, plan.source.domain))
