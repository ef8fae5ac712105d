"""The fakes' world: one JSON file that survives the process being killed (the crash tests kill
the orchestrator and resume in a new process), changed under an flock and replaced atomically.

World shape (see `new_world`):
  domains:  name -> {uuid, running, disks{target: path}, nics{mac: network}, links{mac: up}, guest,
                    autostart, memory, config?}  autostart: host-level, not copied by a clone (like
            libvirt); nics/links: live; config {nics, links}: the persistent definition while a
            LIVE-only change makes it differ (fake_nics.py)
  free_memory: bytes the hypervisor can give a new domain (preflight: the twin's memory must fit)
  images:   path -> {size, backing, checkpoint?}  checkpoint: {name, guest} on a checkpoint overlay,
            the guest's state when it was taken (what a revert to it restores)
  guests:   id -> {boot_id, files[], mail[], release, services, authorized_sync_keys[], sync_key_pairs[]}
  commands: [{match: regex, rc, stdout, set: {guest fields}, add_mail: n, role, cut: n, drop: n, stale: n}]
            canned results; cut/drop: the first n matching runs lose the connection before/after
            running; stale: the first n find it dead and reconnect quietly first (a sync
            session's tunnel is then gone: fake_syncer.py);
            first match; add_mail: mail that clients deliver once the command has run. A command
            with no entry that is none of upgrader's own guest commands raises UnexpectedCall
            (fake_commands.py); `expect_plan(world, plan)` cans what the plan itself runs
  incoming: [n, ...]   mails that reach prod before each pre-sync pass (traffic while it serves)
  faults:   ["libvirt"       the hypervisor does not answer (check, domain, claims, free memory),
             "probe:prod", "probe:staging"  a service check fails on that role,
             "ssh:staging"   SSH to that role does not answer,
             "reboot:staging" a reboot there never comes back,
             "sync:pass"     a pre-sync pass fails (rsync exits 23)]
  expected_forwards: [{listen_port, host, port}]  remote forwards a test expects (a shell asked for
            another raises UnexpectedForward); `expect_plan` adds the plan's package proxy
  forwards: [{role, session, listen_port, host, port}]  open forwards, per process (`session`): a
            run effect lists the ones live on its role's connection (`forwards`) and its `env`
  faults:   ... "forward:staging"  the twin's sshd refuses a remote forward (ForwardRefused);
             "sync:open", "sync:final", "sync:revoke", "sweep:prod": see fake_syncer.py
  nwfilters: name -> [ports]   defined nwfilters (fake_client_hold.py)
  client_holds: domain -> {mac: filter name}   live filterrefs of running domains (dropped when
            the domain stops); a name without the upgrader-hold- prefix is the NIC's own filter
  effects:  [{op, ...}]
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid as uuidlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from upgrader.errors import InfraError
from upgrader.testing.fake_commands import exact

if TYPE_CHECKING:
    from upgrader.plan import Plan

World = dict[str, Any]

# memory: a world (or domain) without the key has these (worlds written before they existed)
DEFAULT_FREE_MEMORY = 16 * 2**30  # world["free_memory"]: what the hypervisor can give a new domain
DEFAULT_MEMORY = 2**30  # domain["memory"]: what the domain is defined with (its twin gets as much)


def new_world(
    domain: str = "mailhost",
    production_network: str = "prod-net",
    mac: str = "52:54:00:12:34:56",
    mails: int = 20,
) -> World:
    guest = {"boot_id": str(uuidlib.uuid4()), "files": [], "mail": [f"m{i}" for i in range(mails)], "release": "1", "services": True}
    return {
        "hypervisor": "fake-hypervisor 1.0",
        "free_bytes": 50 * 2**30,
        "free_memory": DEFAULT_FREE_MEMORY,
        "domains": {
            domain: {
                "uuid": str(uuidlib.uuid4()),
                "running": True,
                "disks": {"vda": f"/fake/{domain}.qcow2"},
                "nics": {mac: production_network},
                "links": {mac: True},
                "guest": "g0",
                "autostart": True,  # a production VM starts with its hypervisor
                "memory": DEFAULT_MEMORY,
            }
        },
        "images": {f"/fake/{domain}.qcow2": {"size": 2 * 2**30, "backing": None}},
        "guests": {"g0": guest},
        "commands": [],
        "playbooks": [],  # canned `ansible:` playbook runs (fake_playbooks.py)
        "incoming": [40, 8, 1],
        "faults": [],
        "nwfilters": {},
        "client_holds": {},
        "effects": [],
    }


def expect_plan(world: World, plan: "Plan | str | os.PathLike[str]", *, probe_rc: int = 1) -> World:
    """Tell the fake shell what the plan runs: every command the plan declares gets a canned entry
    (an exact match, appended after the entries already there, which win): upgrade `run:` steps
    (on the twin, exit 0), `ansible:` steps' playbooks (world["playbooks"], exit 0), the package proxy's
    forward (staging.packages), their `probe:`s (on the twin, exit `probe_rc`: not done, so the steps
    run), `command` checks of validate/verify (any role, exit 0, no output: a check that wants
    output needs its own entry first) and the sync quiesce/resume commands (any role, exit 0).
    Anything else the engine runs - but upgrader's own guest commands - raises UnexpectedCall.
    Idempotent. `plan`: a Plan or a plan file."""
    from upgrader.plan import Plan, load_plan

    loaded = plan if isinstance(plan, Plan) else load_plan(plan)
    entries: list[dict[str, Any]] = []
    for step in loaded.upgrade:
        if getattr(step, "run", None):
            entries.append({"match": exact(step.run), "role": "staging"})
        if getattr(step, "probe", None):
            entries.append({"match": exact(step.probe), "role": "staging", "rc": probe_rc})
    for check in [*loaded.validate, *(loaded.verify or [])]:
        if check.kind == "command":
            entries.append({"match": exact(check.command.run)})
    entries += [{"match": exact(c)} for c in [*loaded.sync.quiesce, *loaded.sync.resume]]  # prod (and a rehearsal on the twin)
    if loaded.staging.packages is not None:  # the twin's package proxy
        proxy = loaded.staging.packages.forward
        forward = {"listen_port": proxy.listen_port, "host": proxy.host, "port": proxy.port}
        expected = world.setdefault("expected_forwards", [])
        if forward not in expected:
            expected.append(forward)
    for entry in entries:
        if not any(e["match"] == entry["match"] and e.get("role") == entry.get("role") for e in world["commands"]):
            world["commands"].append(entry)
    playbooks = world.setdefault("playbooks", [])
    for step in loaded.upgrade:  # `ansible:` steps: the fake playbook runner (fake_playbooks.py), exit 0
        spec = getattr(step, "ansible", None)
        if spec is not None:
            match = exact(str(loaded.resolve_path(spec.playbook)))
            if not any(e["match"] == match for e in playbooks):
                playbooks.append({"match": match})
    return world


class WorldFile:
    """The world JSON, read-modify-written under an flock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> World:
        return json.loads(self.path.read_text())

    @contextmanager
    def change(self) -> Iterator[World]:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            world = self.read()
            yield world
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(world, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def write(self, world: World) -> None:
        self.path.write_text(json.dumps(world, indent=1, sort_keys=True))


def effect(world: World, op: str, **fields: Any) -> None:
    world["effects"].append({"op": op, **fields})


def domain_of(world: World, name: str) -> dict[str, Any]:
    if name not in world["domains"]:
        raise InfraError(f"fake: domain {name} not found")
    return world["domains"][name]


def chains_of(world: World, name: str) -> list[list[str]]:
    chains = []
    for path in domain_of(world, name)["disks"].values():
        chain = [path]
        while chain[-1] in world["images"] and world["images"][chain[-1]]["backing"]:
            chain.append(world["images"][chain[-1]]["backing"])
        chains.append(chain)
    return chains


def is_used(world: World, path: str) -> bool:
    return any(path in d["disks"].values() for d in world["domains"].values()) or any(
        img["backing"] == path for img in world["images"].values())
