"""The files a plan names besides itself: the SSH keys and known_hosts files of both targets, and
the playbooks of its `ansible:` upgrade steps.
`plan check` refuses a plan whose files are missing (exit 2); `upgrader preflight` and `start`
report them among the inhibitors. Relative paths resolve against the plan's directory
(Plan.resolve_path), as the SSH adapter resolves them.

    for problem in plan_file_problems(plan):
        print(problem)          # "ssh.prod.key: /etc/upgrader/keys/id: no such file"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from upgrader.plan import Plan

__all__ = ["FileProblem", "plan_file_problems", "plan_files"]


@dataclass(frozen=True)
class FileProblem:
    key: str  # "ssh.prod.key"
    path: Path  # resolved
    why: str  # "no such file"

    def __str__(self) -> str:
        return f"{self.key}: {self.path}: {self.why}"


def plan_files(plan: "Plan") -> list[tuple[str, Path]]:
    """(key path, resolved path) of every file the plan names: SSH keys and known_hosts, playbooks."""
    found = []
    for role in ("prod", "staging"):
        target = getattr(plan.ssh, role)
        for field in ("key", "known_hosts"):
            value = getattr(target, field)
            if value:
                found.append((f"ssh.{role}.{field}", plan.resolve_path(value)))
    for i, step in enumerate(plan.upgrade):
        spec = getattr(step, "ansible", None)
        if spec is not None:
            found.append((f"upgrade[{i}].ansible.playbook", plan.resolve_path(spec.playbook)))
    return found


def _problem(path: Path) -> str | None:
    try:
        if not path.exists():
            return "no such file"
        if path.is_dir():
            return "is a directory, not a file"
    except OSError as exc:
        return f"cannot check it: {exc.strerror or exc}"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def plan_file_problems(plan: "Plan") -> list[FileProblem]:
    """Every SSH key, known_hosts file or playbook of the plan that is missing or unreadable."""
    return [FileProblem(key, path, why) for key, path in plan_files(plan) if (why := _problem(path)) is not None]
