"""Commands the orchestrator itself runs on guests: templates with quoted arguments. The fakes
key their canned behaviour on these exact templates."""

from __future__ import annotations

from upgrader.ports import Command, cmd

IS_MARKED_TEMPLATE = "test -e {}"


def marker_path(state_dir: str, run_id: str, key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"{state_dir.rstrip('/')}/{run_id}/{safe}.done"


def is_marked(state_dir: str, run_id: str, key: str) -> Command:
    return cmd(IS_MARKED_TEMPLATE, marker_path(state_dir, run_id, key))
