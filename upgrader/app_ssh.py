"""`upgrader ssh HOST [--twin | --prod] [-- CMD ...]`: a shell, or one command, on the twin or on
prod, through the run's own SSH path (the plan's target for the role: host, port, user, key,
proxy command, pinned host keys; adapters/openssh.py).

No lock is taken: the process running the run holds the host lock, and this must work beside it
(a running, parked or held run alike). The run is read like `status` reads it (run.json reconciled
with the journal in memory only, nothing repaired) and its plan like `resume` loads it (refused if
it changed since the start). Each use is journaled in the run's journal - `ssh` before (who,
which machine through which path, the command or null for a shell, the phase), `ssh_end` after
(the exit code; null if this process was interrupted) - by appends that an flock on the journal
serialises with the engine's (store/journal.py). Neither kind is a `begin`/`done`/`transition`,
so the step index, the phase reconciliation and the failure count ignore them.

Which path reaches which machine follows the journal, as the steps' `connect("prod")` and
`connect("staging")` do:
  --prod   the prod path: whatever answers on the production segment - the old VM before the
           takeover, the twin (the new prod) after it, the old VM again once a rollback gave the
           network back.
  --twin   the staging path while the twin is on the staging segment (from the clone until the
           takeover, and again after a rollback's give-back); the prod path while the twin is prod.
           Refused before the clone defined the twin, once an abort or rollback began removing it,
           and while a takeover or give-back is in doubt (begun, not known to be done): the twin
           may then be on either segment, and the other path could reach the old VM instead."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

from upgrader.adapters.openssh import SshCall, find_client, known_hosts_file, openssh_argv, pinned_keys, run_client
from upgrader.app import Context, _active, _plan_of
from upgrader.errors import IllegalAction, InputError, NoRun, UpgraderError
from upgrader.plan import Plan, SshTarget
from upgrader.ports import RemoteForward
from upgrader.record import RunRecord
from upgrader.steps.base import Journal
from upgrader.store import RunStore

Machine = Literal["twin", "prod"]
TAKEOVER, GIVE_BACK = "cutover.takeover", "rollback.network"
TWIN_REMOVED = ("abort.remove_twin", "rollback.remove_twin")


@dataclass(frozen=True)
class SshOptions:
    host: str
    machine: Machine = "twin"
    command: tuple[str, ...] | None = None  # None: an interactive shell
    by: str = ""  # who, for the journal
    tty: bool = False  # stdin is a terminal: an interactive shell gets a pty


@dataclass(frozen=True)
class Route:
    role: str  # "prod" or "staging": the plan's ssh target, as in ctx.ports.shells.connect(role)
    reaches: str  # what answers there, for the operator


@dataclass(frozen=True)
class Session:
    record: RunRecord
    options: SshOptions
    route: Route
    call: SshCall
    client: str  # the ssh binary
    plan: Plan


@dataclass(frozen=True)
class _RunJournal:
    """Appends to the run's journal without the host lock (safe: see the module doc)."""

    store: RunStore
    host: str
    run_id: str

    def append(self, entry: dict[str, Any]) -> None:
        self.store.append(self.host, self.run_id, entry)


def route(machine: Machine, journal: Journal, plan: Plan, record: RunRecord) -> Route:
    """Which of the plan's two SSH paths reaches `machine` now (see the module doc)."""
    begun, done = journal.begun, journal.done
    twin, old, host = plan.twin_name, plan.source.domain, record.host
    moved = TAKEOVER in begun and GIVE_BACK not in done  # the twin is (or may be) on the production segment
    doubt = next((key for key in (TAKEOVER, GIVE_BACK) if key in begun and key not in done), None)
    if machine == "prod":
        if not moved:
            return Route("prod", f"prod ({old})")
        if doubt:
            return Route("prod", f"whatever answers on the production segment: {doubt} is in doubt, so {old} or {twin}")
        return Route("prod", f"prod, which is the twin {twin} since the cutover ({old} is off the production segment)")
    if "clone.define" not in begun:
        raise IllegalAction(f"there is no twin yet: the run is in phase {record.phase.value}; the clone phase defines {twin}",
                            hint=f"`upgrader ssh {host} --prod` reaches prod; `upgrader status {host}` shows the run")
    removed = next((key for key in TWIN_REMOVED if key in begun), None)
    if removed:
        raise IllegalAction(f"the twin {twin} is gone: the run began removing it ({removed})",
                            hint=f"`upgrader ssh {host} --prod` reaches prod")
    if not moved:
        return Route("staging", f"the twin {twin} on the staging segment")
    if doubt:
        raise IllegalAction(f"the twin {twin} may be on either segment: {doubt} began and is not known to be done",
                            hint=f"`upgrader resume {host}` settles it; `upgrader ssh {host} --prod` reaches whatever "
                                 "answers on the production segment")
    return Route("prod", f"the twin {twin}, prod since the cutover")


def _target(plan: Plan, role: str) -> SshTarget:
    return {"prod": plan.ssh.prod, "staging": plan.ssh.staging}[role]


def _call(plan: Plan, role: str, options: SshOptions) -> SshCall:
    t = _target(plan, role)
    if t.known_hosts is None:
        raise InputError(f"the plan has no known_hosts for ssh.{role}: the run accepts no host key without one",
                         hint=f"add `known_hosts: FILE` with the guest's host key to ssh.{role}")
    return SshCall(
        host=t.host, port=t.port, user=t.user,
        key=plan.resolve_path(t.key) if t.key else None,
        proxy_command=t.proxy_command,
        connect_timeout=t.connect_timeout.total_seconds(),
        host_keys=pinned_keys(plan.resolve_path(t.known_hosts), t.host, t.port),
        command=options.command,
        tty=options.tty and options.command is None,
        forward=package_forward(plan, role),
    )


def package_forward(plan: Plan, role: str) -> RemoteForward | None:
    """The package proxy's forward for a shell on the isolated twin (the staging path): the same
    one the run's steps get (plan `staging.packages`), so an operator repairing a held twin can
    install packages; None on the prod path (a machine there has its own route)."""
    proxy = plan.staging.packages
    return proxy.forward if proxy is not None and role == "staging" else None


def proxy_hint(session: "Session") -> str | None:
    """The one line telling the operator how the twin's tools reach the package proxy."""
    proxy = session.plan.staging.packages
    if session.call.forward is None or proxy is None:
        return None
    return (f"package proxy: export http_proxy={proxy.twin_url} HTTP_PROXY={proxy.twin_url}  "
            f"(forwarded to {proxy.proxy_host}:{proxy.proxy_port} for this session)")


def prepare(ctx: Context, options: SshOptions) -> Session:
    """Everything checked before anything is run or journaled: the run, its plan, the path, the
    pinned keys, the ssh client."""
    try:
        record = _active(ctx, options.host, repair=False)
    except NoRun as exc:
        raise NoRun(exc.message, hint=f"`upgrader ssh` reaches the VMs of an unfinished run (running, parked or held); "
                                      f"`upgrader show {options.host}` names a finished run's plan, whose ssh section "
                                      "says how to reach them by hand") from None
    plan = _plan_of(record, ctx.store)
    journal = Journal.from_entries(_RunJournal(ctx.store, record.host, record.run_id),
                                   ctx.store.journal(record.host, record.run_id))
    way = route(options.machine, journal, plan, record)
    call = _call(plan, way.role, options)
    return Session(record, options, way, call, find_client(), plan)


def run(ctx: Context, session: Session, runner: Callable[[list[str]], int] = run_client) -> int:
    """Journal the use, run ssh (stdin, stdout, stderr passed through), journal its exit code;
    returns it (ssh's own 255 when it could not connect or the host key did not match)."""
    record, call = session.record, session.call
    journal = Journal(_RunJournal(ctx.store, record.host, record.run_id))
    ident = secrets.token_hex(4)
    journal.write("ssh", session=ident, by=session.options.by, machine=session.options.machine, role=session.route.role,
                  target=call.where, command=call.remote_command, phase=record.phase.value,
                  **({"forward": call.forward.describe()} if call.forward is not None else {}))
    started = time.monotonic()
    try:
        with known_hosts_file(call.host_keys) as known_hosts:
            rc = runner(openssh_argv(call, known_hosts, session.client))
    except BaseException:
        with suppress(UpgraderError):  # never hide what interrupted us
            journal.write("ssh_end", session=ident, rc=None, seconds=round(time.monotonic() - started, 3))
        raise
    journal.write("ssh_end", session=ident, rc=rc, seconds=round(time.monotonic() - started, 3))
    return rc
