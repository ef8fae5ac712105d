"""Use cases behind the CLI: start, resume, abort, rollback, decommission (run-due: app_due.py,
status and list: app_status.py). Each takes an options object, holds the host lock while it
changes anything, and hands back records; the CLI renders. No printing here."""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from upgrader.adapters.factory import build_ports
from upgrader.engine import AbortRequested, Engine, request_abort
from upgrader.errors import (BusyError, IllegalAction, InfraError, InputError, LockedError, NoRun, PlanError,
                             StateUnwritable, UnknownHost, UpgraderError)
from upgrader.events import Listener, Notice
from upgrader.machine import RunMachine
from upgrader.phases import AFTER_CUTOVER, BEFORE_CUTOVER, FORWARD, PROD_AT_STAKE, Phase
from upgrader.plan import Plan, load_plan, resolve_plan_path
from upgrader.plan_files import plan_file_problems
from upgrader.preflight_checks import run_checks
from upgrader.run_plan import PLAN_COPY, load_run_plan, load_run_plan_legacy, read_new_plan, sha256, take_plan
from upgrader.unstarted import abort_untouched, claim_made, never_left_preflight, release_stale_claim
from upgrader.window_edit import follow_window_edit
from upgrader.config import load_settings
from upgrader.held import HeldView
from upgrader.step_keys import revert_targets, skippable
from upgrader.record import RunOptions, RunRecord, VmIdentity, new_run_id, utcnow
from upgrader.steps import STEPS
from upgrader.steps.base import Journal, Ports, ReadOnlyJournal
from upgrader.steps.decommission import decommission_began
from upgrader.steps.identity import OLD_VM_OFF_HINT, refuse_foreign, require_ours
from upgrader.steps.revert import pending as pending_revert
from upgrader.steps.revert import revert_twin
from upgrader.store import HostLock, RunStore

PortsFactory = Callable[[Plan, str], Ports]


@dataclass
class Context:
    """What every use case needs: where state lives, who listens, how ports are built."""

    store: RunStore
    listeners: list[Listener] = field(default_factory=list)
    ports_factory: PortsFactory = build_ports
    now: Callable[[], dt.datetime] = utcnow
    lock_dir: Path = field(default_factory=lambda: load_settings().lock_dir)

    def emit_notice(self, text: str, level: str = "info") -> None:
        self.emit_notice_event(Notice(text, level))

    def emit_notice_event(self, notice: Notice) -> None:
        for listener in self.listeners:
            listener(notice)


@dataclass(frozen=True)
class StartOptions:
    host: str
    plan: str
    now: bool = False
    yes: bool = False  # confirms --now for a plan whose customers were promised a window


def _confirm_now(plan: Plan, now: bool, yes: bool) -> None:
    if now and plan.window is not None and not yes:
        raise InputError(
            "--now would cut over outside the window the customers are told about; confirm with --yes",
            hint="add --yes to confirm (it is recorded in the run's journal)",
        )


@dataclass(frozen=True)
class DryRunPhase:
    phase: Phase
    actions: list[str]


def load(plan_arg: str, cwd: Path | None = None, *, files: bool = False) -> tuple[Path, Plan]:
    """A plan for a new run (start, check, dry run, preflight): also refused if its window has no
    usable occurrence left from now on. `files` (plan check): also refused if an SSH key or
    known_hosts file it names is missing or unreadable. A running run's plan is read by
    `_plan_of` without these checks."""
    path = resolve_plan_path(plan_arg, cwd)
    plan = load_plan(path, now=utcnow())
    if files and (problems := plan_file_problems(plan)):
        raise PlanError([f"{path}: {p}" for p in problems],
                        hint="create the files, or fix the paths (relative ones are relative to the plan file)")
    return path, plan


def dry_run(options: StartOptions) -> tuple[Path, Plan, list[DryRunPhase]]:
    """What every phase would do. Reads the plan only: no state, no lock, no connection."""
    path, plan = load(options.plan)
    phases = [DryRunPhase(p, STEPS[p].describe(plan)) for p in FORWARD if p in STEPS]
    phases.append(DryRunPhase(Phase.DECOMMISSIONED, ["end state: old VM gone, images reclaimed"]))
    return path, plan, phases


def vm_lock(ctx: Context, vm: VmIdentity) -> HostLock:
    """A machine-wide lock on the VM by its UUID: two runs of one VM under two host names or
    from two state dirs exclude each other like two runs of one name do."""
    directory = ctx.lock_dir

    def prepare() -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnwritable(
                f"cannot create the VM lock directory {directory}: {exc.strerror}",
                hint="set `lock_dir` in /etc/upgrader.yaml or UPGRADER_LOCK_DIR to a directory you can write "
                     "(one per machine: every controller on it must use the same)",
            ) from exc

    return HostLock(vm.domain, directory / f"{vm.uuid}.lock", prepare, what=f"VM {vm.domain} (uuid {vm.uuid})")


@contextmanager
def holding(ctx: Context, host: str) -> Iterator[RunRecord]:
    """The host lock, the run, and the VM lock of the VM it claimed (released in reverse)."""
    with ExitStack() as stack:
        stack.enter_context(ctx.store.lock(host))
        record = _active(ctx, host)
        if record.vm is not None:
            stack.enter_context(vm_lock(ctx, record.vm))
        yield record


def start(ctx: Context, options: StartOptions) -> RunRecord:
    path = resolve_plan_path(options.plan)
    data, plan = read_new_plan(path, ctx.now())  # the window: seen from the run's clock
    _confirm_now(plan, options.now, options.yes)
    with ExitStack() as stack:
        stack.enter_context(ctx.store.lock(options.host))
        active = ctx.store.active_run(options.host)
        if active is not None:
            raise _busy(ctx, options.host, active)
        earlier = ctx.store.runs(options.host)
        run_id = new_run_id(ctx.now(), after=earlier[-1] if earlier else None)
        ports = ctx.ports_factory(plan, run_id)  # bad SMTP settings in the environment: refused here
        if ports.operator is not None:  # a missing webhook secret is found now, not when a run is held
            ports.operator.check()
        run_checks(plan, ports, ctx.now()).raise_if_inhibited(  # nothing is created when one fails
            hint=f"nothing was created or changed: fix them, then start again (`upgrader preflight {options.host} "
                 f"--plan {options.plan}` checks without starting)")
        source = ports.hypervisor.domain(plan.source.domain)  # None: preflight says so, nothing to claim
        vm = VmIdentity(uri=plan.source.libvirt_uri, domain=source.name, uuid=source.uuid) if source else None
        if vm is not None:
            stack.enter_context(vm_lock(ctx, vm))
            release_stale_claim(ctx.store, ports.hypervisor, vm.domain, ctx.emit_notice_event)
            refuse_foreign(ports.hypervisor, vm.domain, run_id)
        record = RunRecord(
            run_id=run_id,
            host=options.host,
            plan_path=str(path.resolve()),
            plan_sha256=sha256(data),
            options=RunOptions(now=options.now),
            vm=vm,
        )
        ctx.store.create(record, files={PLAN_COPY: data})  # the run's own copy of its plan (run_plan.py)
        if options.now:
            ctx.store.append(record.host, record.run_id, {"kind": "operator", "action": "now", "confirmed": options.yes})
        return Engine(ctx.store, record, plan, ports, ctx.listeners, now=ctx.now).run(resumed=False)
    raise AssertionError("unreachable")


def _active(ctx: Context, host: str, *, repair: bool = True) -> RunRecord:
    """The host's unfinished run, run.json reconciled with its journal (rolled forward over a crash
    between the two; anything else that disagrees is refused, exit 4). `repair` only with the lock."""
    ids = ctx.store.runs(host)
    if not ids:
        raise UnknownHost(f'no runs for host "{host}"')
    record, _ = ctx.store.load_checked(host, ids[-1], repair=repair)
    if record.finished:
        raise NoRun(f'host "{host}" has no unfinished run (last run {record.run_id} ended {record.phase.value})')
    return record


def _busy(ctx: Context, host: str, active: RunRecord) -> BusyError:
    if never_left_preflight(ctx.store, active):
        return BusyError(
            f'host "{host}" has an unfinished run {active.run_id} that never got past preflight (nothing was done '
            "on any machine" + (" but its claim on the VM" if claim_made(ctx.store, active) else "") + ")",
            hint=f"`upgrader abort {host}` clears it (also when libvirt does not answer or the plan changed), then start again",
        )
    return BusyError(
        f'host "{host}" has an unfinished run {active.run_id} in phase {active.phase.value}',
        hint=f"`upgrader resume {host}` continues it, `upgrader abort {host}` ends it",
    )


def _plan_of(record: RunRecord, store: RunStore | None = None) -> Plan:
    """The run's plan for a read-only look (no lock, nothing journaled): the run's copy with safe
    edits of the file applied, the copy alone when the file is gone; an edit elsewhere is refused
    (run_plan.py). Without `store`, a run's plan file must be exactly as it was (runs from before
    copies were kept)."""
    if store is None:
        return load_run_plan_legacy(record)
    return load_run_plan(store, record).plan


# A resume of a run in one of these works from the run's copy of its plan, like abort, rollback
# and decommission do (going_back): prod may be down (cutover, verify, rolling_back: nothing may
# keep it down, not even an edit of the plan file), or what is left is to go back or to remove the
# old VM. An edit of the plan file that is not safe (or a file that no longer parses) is ignored
# with a warning; a safe edit is taken as usual.
FROM_COPY: frozenset[Phase] = PROD_AT_STAKE | {Phase.COMPLETED, Phase.DECOMMISSIONED, Phase.ABORTED, Phase.ROLLED_BACK}


def _engine(ctx: Context, record: RunRecord, *, force_decommission: bool = False, going_back: bool = False,
            first: Callable[[Engine], None] | None = None) -> Engine:
    """An engine on the run's plan (run_plan.py): a safe edit of the plan file is taken and
    journaled (`plan_edit`); an unsafe one is refused, or - `going_back` (abort, rollback,
    decommission, a resume of a run in FROM_COPY) - ignored with a warning: the run's copy is
    used. `first`: what must happen as soon as the engine exists, before the plan edit is taken
    (the URGENT notice of run-due)."""
    loaded = load_run_plan(ctx.store, record, going_back=going_back, now=ctx.now())
    engine = Engine(ctx.store, record, loaded.plan, ctx.ports_factory(loaded.plan, record.run_id), ctx.listeners,
                    now=ctx.now, force_decommission=force_decommission)
    if first is not None:
        first(engine)
    if not going_back and loaded.edit is not None and "window" in loaded.edit.safe_fields:
        # before the copy is replaced: a crash in between finds the edit again on the next load
        follow_window_edit(engine.ctx)  # the fixed window gives way to the edited one; customers told
    take_plan(ctx.store, record, loaded, engine.journal.write, engine.emit)
    return engine


def resume(ctx: Context, host: str, *, now: bool = False, yes: bool = False, who: str = "") -> RunRecord:
    """Continue the run; a held run is retried (its failed step runs again from scratch). A run in
    FROM_COPY (inside the cutover, completed, cleaning up) works from its plan copy."""
    with holding(ctx, host) as record:
        engine = _engine(ctx, record, going_back=record.phase in FROM_COPY)
        if now and not record.options.now:
            _confirm_now(engine.plan, now, yes)
            record.options.now = True
            engine.journal.write("operator", action="now", confirmed=yes)
        if record.phase == Phase.HELD:
            go_on(engine, "retry", by=who, via="resume")
        return engine.run(resumed=True)


def retry(ctx: Context, host: str, who: str) -> RunRecord:
    """Run a held run's failed step again from scratch (it is probed first: a step the operator
    finished by hand counts as done), then go on."""
    with holding(ctx, host) as record:
        engine = _engine(ctx, record)
        go_on(engine, "retry", by=who)
        return engine.run(resumed=True)


def go_on(engine: Engine, action: str, **fields: object) -> None:
    """Leave a held run's hold; a revert that was interrupted is finished first (to the target
    it journaled): its twin may be stopped or half reverted, nothing else may run on it."""
    engine.require_held()
    if engine.abort_requested():  # `upgrader abort` came first: engine.run aborts
        return
    going = pending_revert(engine.journal)
    try:
        if going is not None:
            engine.emit(Notice(f"finishing the interrupted revert to {going} first", "warning"))
            revert_twin(engine.ctx, going)
            engine.leave_hold("revert", into=Phase.UPGRADE, to=going, finished_by=action, **fields)
            return
        twin_up(engine)
    except AbortRequested as exc:  # asked while the twin was being reverted or started
        engine.abort_held(exc)
        return
    engine.leave_hold(action, **fields)


def twin_up(engine: Engine) -> None:
    """A held twin found stopped (the hypervisor rebooted in the days it was held, someone shut
    it down) is started before the run goes on; probed by its state, so never started twice."""
    held = engine.require_held()
    if held.phase == Phase.CLONE:  # the clone's own steps define and start it
        return
    twin = engine.plan.twin_name
    info = require_ours(engine.ctx, twin, "start")
    if info is not None and not info.running:
        engine.journal.write("operator", action="start_twin", domain=twin)
        engine.emit(Notice(f"{twin} was not running: starting it before going on", "warning"))
        engine.ports.hypervisor.start(twin)


def skip(ctx: Context, host: str, who: str, reason: str) -> RunRecord:
    """Mark a held run's failed step done by hand (journaled with who and why), then go on."""
    if not reason.strip():
        raise InputError("skip needs a reason", hint="`--reason TEXT` is journaled with your name")
    with holding(ctx, host) as record:
        engine = _engine(ctx, record)
        held = record.held
        if record.phase != Phase.HELD or held is None:
            raise IllegalAction(f"nothing to skip: the run is not held (phase {record.phase.value})")
        if not skippable(held.step):
            raise IllegalAction(
                f"{held.step or held.phase.value} cannot be skipped: the steps after it need what it makes",
                hint=f"fix it on the twin (`upgrader ssh {host} --twin`), then `upgrader retry {host}`; or `upgrader abort {host}`",
            )
        if pending_revert(engine.journal) is not None or engine.journal.unapplied_rewind is not None:
            raise IllegalAction("a revert of the twin is not finished: the failed step is to run again, not to be skipped",
                                hint=f"`upgrader retry {host}` finishes the revert and runs the steps again")
        assert held.step is not None
        if held.step not in engine.journal.done:  # a skip killed after this line is not written twice
            outputs = {"skipped": True, "by": who, "reason": reason, "at": ctx.now().isoformat()}
            engine.journal.write("done", key=held.step, outputs=outputs)
            record.outputs[held.step] = outputs
        twin_up(engine)
        engine.leave_hold("skip", by=who, reason=reason)
        return engine.run(resumed=True)


def approve(ctx: Context, host: str, who: str) -> RunRecord:
    """Record the manual approval a plan with `approval: required` waits for."""
    with holding(ctx, host) as record:
        if record.phase not in BEFORE_CUTOVER:
            raise IllegalAction(f"nothing to approve: the run is in phase {record.phase.value}")
        engine = _engine(ctx, record)
        if "approval" in engine.journal.done:
            raise IllegalAction(f"already approved by {engine.journal.done['approval'].get('by')}")
        engine.journal.write("done", key="approval", outputs={"by": who, "at": ctx.now().isoformat()})
        if record.parked and record.parked.startswith("waiting for approval"):
            record.parked = (f"approved by {who}; the next `upgrader resume {host}` or `upgrader run-due` goes on "
                             + ("(cut over now was asked)" if record.options.now else
                                "(in its window)" if engine.plan.window is not None else "(the plan has no window)"))
            ctx.store.save(record)
        return record


def abort(ctx: Context, host: str) -> RunRecord | None:
    """Abort before cutover. If another process holds the run, ask it to stop (returns None): it
    honours the request at its next step, or - if the cutover began meanwhile - refuses it out
    loud (journal, warning) and goes on."""
    try:
        with holding(ctx, host) as record:
            if record.phase != Phase.ABORTED:
                RunMachine(record.phase).fire("abort")  # raises IllegalAction with a hint
            if never_left_preflight(ctx.store, record):
                try:  # nothing to undo but the claim: never stuck on an unreachable hypervisor or a plan
                    engine = _engine(ctx, record, going_back=True)
                    engine.ports.hypervisor.check()
                except (InputError, InfraError) as exc:
                    return abort_untouched(ctx.store, record, exc, ctx.emit_notice_event)
            else:
                engine = _engine(ctx, record, going_back=True)
            if record.phase != Phase.ABORTED:
                engine.journal.write("operator", action="abort")
                engine.fire("abort")
            return engine.run(resumed=True)
    except LockedError:
        record = _active(ctx, host, repair=False)
        if record.phase == Phase.ABORTED:
            raise LockedError(f"the run {record.run_id} is aborting already in another process",
                              hint=f"wait for it; `upgrader status {host}` shows how it ended") from None
        if record.phase not in BEFORE_CUTOVER:
            raise IllegalAction(f"cannot abort a run in phase {record.phase.value}",
                                hint=f"after cutover use `upgrader rollback {host}`") from None
        request_abort(ctx.store.run_dir(host, record.run_id))
        ctx.emit_notice(f"abort requested: the process running {record.run_id} stops at its next step and cleans up; "
                        "if it has begun the cutover by then, it refuses the request and says so")
        return None


def rollback(ctx: Context, host: str) -> RunRecord:
    with holding(ctx, host) as record:
        if record.phase not in (Phase.ROLLING_BACK, Phase.ROLLED_BACK):  # (rolled back: only the record to finish)
            if record.phase not in AFTER_CUTOVER:
                RunMachine(record.phase).fire("rollback")  # raises IllegalAction with a hint
            engine = _engine(ctx, record, going_back=True)
            _check_rollback_possible(engine)
            engine.journal.write("operator", action="rollback")
            engine.fire("rollback")
        else:
            engine = _engine(ctx, record, going_back=True)
        return engine.run(resumed=True)


def _check_rollback_possible(engine: Engine) -> None:
    """Refused (nothing changed) when there is nothing to go back to."""
    host, old = engine.record.host, engine.plan.source.domain
    if decommission_began(engine.ctx):
        raise IllegalAction(
            f"cannot roll back: decommissioning {old} began (the old VM may be stopped or gone already)",
            hint=f"decommission only goes forward: `upgrader decommission {host}` finishes it",
        )
    info = engine.ports.hypervisor.domain(old)
    if info is None or (engine.record.vm is not None and info.uuid != engine.record.vm.uuid):
        raise IllegalAction(f"cannot roll back: the old VM {old} is gone (or is not the VM this run recorded)",
                            hint="nothing was changed")
    if not info.running:
        raise IllegalAction(f"cannot roll back: the old VM {old} is not running", hint=OLD_VM_OFF_HINT.format(old=old, host=host))


def decommission(ctx: Context, host: str) -> RunRecord:
    with holding(ctx, host) as record:
        if record.phase == Phase.DECOMMISSIONED:  # done; killed before run.json said so: just finish the record
            return _engine(ctx, record, going_back=True).run(resumed=True)
        if record.phase != Phase.COMPLETED:
            raise IllegalAction(f"cannot decommission: the run is in phase {record.phase.value}",
                                hint="decommission follows a completed cutover")
        engine = _engine(ctx, record, force_decommission=True, going_back=True)
        engine.journal.write("operator", action="decommission")
        return engine.run(resumed=True)


def held_view(ctx: Context, record: RunRecord) -> HeldView:
    """What `status` says about a held run besides run.json: a revert interrupted or done but not
    gone on from (the journal knows), and the checkpoints left."""
    journal = Journal.from_entries(ReadOnlyJournal(), ctx.store.journal(record.host, record.run_id))
    going = pending_revert(journal)
    reverted = journal.unapplied_rewind if going is None else None
    return HeldView(reverting=going, reverted=reverted, checkpoints=revert_targets(journal.done))


def journal(ctx: Context, host: str) -> tuple[RunRecord, list[dict[str, object]]]:
    record = ctx.store.latest(host)
    if record is None:
        raise UnknownHost(f'no runs for host "{host}"')
    return record, ctx.store.journal(host, record.run_id)
