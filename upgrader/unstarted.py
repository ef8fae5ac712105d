"""Runs that never got past preflight: nothing was done on any machine except, perhaps, the
claim on the VM (libvirt metadata). Such a run is always abortable - also when the hypervisor
does not answer or the plan file changed or is gone - and `start` names the command that
clears it.

    if never_left_preflight(store, record):
        abort_untouched(ctx_store, record, why, emit)   # aborted, finished, nothing touched
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Callable

from upgrader.errors import UpgraderError
from upgrader.events import Notice
from upgrader.phases import Phase
from upgrader.record import utcnow
from upgrader.steps.identity import CLAIM_KEY

if TYPE_CHECKING:
    from upgrader.ports import Claim, Hypervisor
    from upgrader.record import RunRecord
    from upgrader.store import RunStore

__all__ = ["abort_untouched", "claim_made", "never_left_preflight", "release_stale_claim", "stale_claim"]

# journal keys of a run that changed nothing but (perhaps) the claim: the claim, the checks,
# and the abort's release of that claim
_HARMLESS = frozenset({CLAIM_KEY, "preflight", "abort.release_claim"})


def _begun(entries: list[dict[str, object]]) -> set[str]:
    return {str(e["key"]) for e in entries if e.get("kind") == "begin" and isinstance(e.get("key"), str)}


def never_left_preflight(store: "RunStore", record: "RunRecord") -> bool:
    """An unfinished run in preflight (or in its abort) whose journal shows no step past the checks."""
    if record.finished or record.phase not in (Phase.PREFLIGHT, Phase.ABORTED):
        return False
    return _begun(store.journal(record.host, record.run_id)) <= _HARMLESS


def claim_made(store: "RunStore", record: "RunRecord") -> bool:
    """Did the run (perhaps) put its claim on the VM, and not take it off again?"""
    entries = store.journal(record.host, record.run_id)
    released = any(e.get("kind") == "done" and e.get("key") == "abort.release_claim" for e in entries)
    return CLAIM_KEY in _begun(entries) and not released


def abort_untouched(store: "RunStore", record: "RunRecord", why: UpgraderError,
                    emit: Callable[[Notice], None]) -> "RunRecord":
    """Abort a run that never left preflight without the hypervisor or its plan (`why`: what
    stood in the way). Journaled: the operator's abort (offline, and whether the claim is left on
    the VM), the transition to aborted. If the claim was made it stays on the VM: the notice
    names the command that removes it."""
    left = claim_made(store, record)
    store.append(record.host, record.run_id, {"kind": "operator", "action": "abort", "offline": True,
                                               "why": why.message, "claim_left": left})
    if record.phase != Phase.ABORTED:
        store.append(record.host, record.run_id, {"kind": "transition", "source": record.phase.value,
                                                   "dest": Phase.ABORTED.value, "trigger": "abort"})
    now = utcnow()
    for timing in record.timings:
        if timing.ended is None:
            timing.ended = now
        if timing.status == "running":
            timing.status = "failed"
    record.phase, record.parked, record.finished, record.cleanup_error = Phase.ABORTED, None, True, None
    store.save(record)
    emit(Notice(f"aborted without touching anything (the run never got past preflight); could not reach what the "
                f"run uses: {why.message}", "warning"))
    if left and record.vm is not None:
        emit(Notice(f"the run's claim may still be on {record.vm.domain}: once libvirt answers, remove it with "
                    f"`virsh -c {record.vm.uri} metadata {record.vm.domain} urn:x-upgrader:claim:1 --config --remove` "
                    "(a new start says so too)", "warning"))
    return record


def release_stale_claim(store: "RunStore", hv: "Hypervisor", domain: str, emit: Callable[[Notice], None]) -> None:
    """A claim left on `domain` by a run of this state dir on this machine that has finished (an
    abort that could not reach libvirt, see abort_untouched) is taken off before a new start
    claims the VM. Any other claim is left for refuse_foreign to refuse."""
    claim = hv.claim_of(domain)
    if claim is None or not stale_claim(store, claim):
        return
    hv.set_claim(domain, None)
    emit(Notice(f"removed the claim that run {claim.run_id} (finished) left on {domain}", "warning"))


def stale_claim(store: "RunStore", claim: "Claim") -> bool:
    """Was `claim` made by a run of this state dir on this machine that has finished?"""
    if claim.controller != socket.gethostname() or claim.state_dir != str(store.root.resolve()):
        return False
    try:
        return store.load(claim.host, claim.run_id).finished
    except UpgraderError:
        return False
