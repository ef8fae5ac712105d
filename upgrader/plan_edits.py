"""Which edits of a running run's plan are safe to take. Pure: two parsed plans (and their text)
in, a PlanEdit out.

Safe: when and how the cutover is scheduled and announced, who is told, timeouts - the window,
announce (its recipients included), operator, approval, description, and every timeout
(`ssh.*.connect_timeout`, `upgrade[i].timeout`, `validate[i].timeout`, `verify[i].timeout`).
Everything else (the VM, SSH targets, the upgrade steps, checks, sync paths, takeover,
keep_old_for ...) is what the run has done or will undo: an edit there is refused, and the
fields and a unified diff of the YAML are shown.

    edit = compare(old_plan, new_plan, old_text, new_text)
    edit.safe_fields    # ["window.start", "upgrade[2].timeout"]
    edit.unsafe_fields  # ["sync.paths[0].path"]
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from upgrader.plan import Plan

__all__ = ["SAFE_TOP_LEVEL", "SAFE_LEAVES", "PlanEdit", "compare", "flatten"]

SAFE_TOP_LEVEL = frozenset({"window", "announce", "operator", "approval", "description"})
SAFE_LEAVES = frozenset({"timeout", "connect_timeout"})

Path = tuple[str | int, ...]


def flatten(value: Any, path: Path = ()) -> dict[Path, Any]:
    """A plan dump as {key path: leaf value}; an empty dict or list is a leaf of its own."""
    if isinstance(value, dict) and value:
        out: dict[Path, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, (*path, key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, (*path, i)))
        return out
    return {path: value}


def dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def is_safe(path: Path) -> bool:
    if path and path[0] in SAFE_TOP_LEVEL:
        return True
    return bool(path) and path[-1] in SAFE_LEAVES


@dataclass(frozen=True)
class PlanEdit:
    safe_fields: list[str]
    unsafe_fields: list[str]
    details: list[str]  # "sync.paths[0].path: '/var/mail/' -> '/var/spool/'" for the unsafe ones
    diff: str  # unified diff of the YAML text

    @property
    def changed(self) -> bool:
        return bool(self.safe_fields or self.unsafe_fields)

    @property
    def safe(self) -> bool:
        return not self.unsafe_fields


def _dump(plan: "Plan") -> dict[str, Any]:
    return plan.model_dump(mode="json")


def compare(old: "Plan", new: "Plan", old_text: str, new_text: str, *, old_name: str = "plan (run's copy)",
            new_name: str = "plan (file)") -> PlanEdit:
    """What changed between the run's plan and the edited one, field by field."""
    before, after = flatten(_dump(old)), flatten(_dump(new))
    missing = object()
    changed = [p for p in sorted(set(before) | set(after), key=lambda p: [str(x) for x in p])
               if before.get(p, missing) != after.get(p, missing)]
    # a safe block that appears or goes (window: added) counts by its top-level key
    safe = sorted({dotted(p[:1]) if p[0] in SAFE_TOP_LEVEL else dotted(p) for p in changed if is_safe(p)})
    unsafe_paths = [p for p in changed if not is_safe(p)]
    details = [f"{dotted(p)}: {before.get(p, '(absent)')!r} -> {after.get(p, '(absent)')!r}" for p in unsafe_paths]
    diff = "".join(difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        fromfile=old_name, tofile=new_name))
    return PlanEdit(safe, [dotted(p) for p in unsafe_paths], details, diff)
