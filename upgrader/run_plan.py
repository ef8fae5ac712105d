"""The plan a run works from. A run keeps a copy of its plan file in its directory (`plan.yml`,
0600, written with the run). Every command that needs the run's plan compares the plan file with
that copy (plan_edits.py):

* the same bytes: the plan as it is;
* the file is gone: the copy (rollback, decommission, abort, status, resume all go on);
* edited in safe fields only (window, announce, operator, approval, timeouts): taken - the
  caller follows a window edit first (window_edit.py: the new window fixed, customers told),
  then journals a `plan_edit` (fields, old and new sha256) and the copy is replaced; a crash
  before the copy is replaced finds the edit again at the next load;
* edited elsewhere: refused with the fields and a diff for a command that goes forward
  (resume, retry, approve ...); a command that goes back (abort, rollback, decommission)
  works from the copy and says the edits were ignored.

Relative paths in the copy (keys, templates) resolve against the original plan file's directory.
A run from before copies were kept has none: its plan file must not change (digest check).

    loaded = load_run_plan(store, record)
    loaded.plan, loaded.edit, loaded.source   # "file" | "copy" | "edited"
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from upgrader.errors import InputError, PlanError
from upgrader.events import Notice
from upgrader.plan import MAX_PLAN_BYTES, Plan, load_plan, parse_plan, plan_digest
from upgrader.plan_checks import window_problem
from upgrader.plan_edits import PlanEdit, compare

if TYPE_CHECKING:
    from upgrader.record import RunRecord
    from upgrader.store import RunStore

__all__ = ["PLAN_COPY", "LoadedPlan", "PlanEditRefused", "load_run_plan", "load_run_plan_legacy", "read_new_plan", "sha256",
           "take_plan"]

PLAN_COPY = "plan.yml"
Source = Literal["file", "copy", "edited", "legacy"]


class PlanEditRefused(InputError):
    """The plan file was edited in fields a running run cannot take."""

    def __init__(self, message: str, edit: PlanEdit, *, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.edit = edit


@dataclass(frozen=True)
class LoadedPlan:
    plan: Plan
    source: Source
    data: bytes  # the bytes `plan` was parsed from
    edit: PlanEdit | None = None  # edited: the safe edit taken; copy: the refused (or unreadable) edit
    note: str | None = None  # why the copy is used instead of the file


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_run_plan_legacy(record: "RunRecord") -> Plan:
    """The plan of a run without a copy: its file exactly as it was."""
    return _legacy(record).plan


def read_new_plan(path: Path, now: datetime) -> tuple[bytes, Plan]:
    """A plan for a new run: its bytes (the run's copy is made of them) and the plan parsed
    from exactly those bytes, refused like `load_plan(now=...)` refuses."""
    try:
        data = path.read_bytes()
    except OSError:
        load_plan(path, now=now)  # raises the PlanError that says what is wrong
        raise
    if len(data) > MAX_PLAN_BYTES:
        load_plan(path, now=now)
    return data, parse_plan(data, str(path), now=now)


def take_plan(store: "RunStore", record: "RunRecord", loaded: LoadedPlan, journal: Callable[..., None],
              emit: Callable[[Notice], None]) -> None:
    """Make `loaded` the run's plan (with the run's lock held): an edit is journaled
    (`plan_edit`: fields, old and new sha256), then the copy and run.json's sha256 follow. A
    crash in between repeats the edit's journal entry on the next load, nothing worse. A window
    edit is followed (window_edit.py) before this is called: the copy replaced means it was."""
    if loaded.note:
        emit(Notice(loaded.note, "warning"))
    if loaded.source != "edited":
        return
    new = sha256(loaded.data)
    fields = loaded.edit.safe_fields if loaded.edit is not None else []
    journal("plan_edit", fields=fields, old=record.plan_sha256, new=new)
    store.replace_file(record.host, record.run_id, PLAN_COPY, loaded.data)
    from upgrader.testing import hooks  # a pause point for the crash tests: one environment lookup

    hooks.maybe_pause("after:plan_copy")  # the copy replaced, run.json not yet
    record.plan_sha256 = new
    store.save(record)
    what = ", ".join(fields) if fields else "comments or formatting only"
    emit(Notice(f"the plan file was edited ({what}): taken for this run (journaled as plan_edit)", "info"))


def _legacy(record: "RunRecord") -> LoadedPlan:
    """A run without a copy: its plan file must be exactly as it was."""
    path = Path(record.plan_path)
    if not path.exists():
        raise InputError(f"the run's plan {path} is gone", hint="put it back where it was when the run started")
    if plan_digest(path) != record.plan_sha256:
        raise InputError(
            f"the plan {path} changed since the run started",
            hint="restore the plan the run started with (`upgrader show HOST` has its sha256), or abort and start anew",
        )
    return LoadedPlan(load_plan(path), "legacy", path.read_bytes())


def _refusal(record: "RunRecord", edit: PlanEdit) -> PlanEditRefused:
    fields = "\n  ".join(edit.details)
    return PlanEditRefused(
        f"the plan {record.plan_path} was edited in fields a running run cannot take:\n  {fields}\n{edit.diff}".rstrip(),
        edit,
        hint=("only window, announce, operator, approval, description and timeouts may change during a run; undo the "
              f"other edits (the run's own copy is {PLAN_COPY} in its run directory), or abort and start anew"),
    )


def load_run_plan(store: "RunStore", record: "RunRecord", *, going_back: bool = False,
                  now: datetime | None = None) -> LoadedPlan:
    """The run's plan as described above. `going_back`: an edit that is not safe (or a file that
    no longer parses) falls back to the copy instead of being refused. `now`: an edited window
    must still have an occurrence (else it is refused like an unsafe edit)."""
    copy = store.read_file(record.host, record.run_id, PLAN_COPY)
    if copy is None:
        return _legacy(record)
    stored = parse_plan(copy, record.plan_path)  # base dir: the original plan's directory
    path = Path(record.plan_path)
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return LoadedPlan(stored, "copy", copy, note=f"the plan file {path} is gone: using the run's copy")
    except OSError as exc:
        return LoadedPlan(stored, "copy", copy, note=f"the plan file {path} cannot be read ({exc.strerror}): using the run's copy")
    if current == copy:
        return LoadedPlan(stored, "file", copy)
    try:
        edited = parse_plan(current, record.plan_path)
    except PlanError as exc:
        if going_back:
            return LoadedPlan(stored, "copy", copy, note=f"the plan file {path} no longer parses: using the run's copy")
        raise PlanError(exc.problems, hint="fix the plan file (or put the run's copy back); only window, announce, "
                                           "operator, approval and timeouts may change during a run") from None
    edit = compare(stored, edited, copy.decode("utf-8", "replace"), current.decode("utf-8", "replace"),
                   new_name=str(path))
    if not edit.changed:  # comments, formatting: take the file as it is
        return LoadedPlan(edited, "edited", current, edit)
    if edit.safe and "window" in edit.safe_fields and edited.window is not None and now is not None:
        found = window_problem(edited.window, now)
        if found is not None and not going_back:
            raise InputError(f"the plan {path} was edited: window.{found[0]}: {found[1]}",
                             hint="set a window that is still to come (or undo the edit)")
    if edit.safe:
        return LoadedPlan(edited, "edited", current, edit)
    if going_back:
        return LoadedPlan(stored, "copy", copy, edit,
                          note=f"the plan file {path} was edited in {', '.join(edit.unsafe_fields)}: ignored, "
                               "using the plan the run started with")
    raise _refusal(record, edit)
