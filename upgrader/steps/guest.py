"""Commands the orchestrator itself runs on guests: templates with quoted arguments. The fakes
key their canned behaviour on these exact templates."""

from __future__ import annotations

from upgrader.ports import Command, cmd, running_path

# Wait while the marked command's shell (pid in the .running file) is still alive - it may have
# outlived a lost connection or a killed orchestrator - then report whether it finished.
IS_MARKED_TEMPLATE = 'while [ -f {0} ] && kill -0 "$(cat {0})" 2>/dev/null; do sleep 1; done; test -e {1}'


def marker_path(state_dir: str, run_id: str, key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"{state_dir.rstrip('/')}/{run_id}/{safe}.done"


def is_marked(state_dir: str, run_id: str, key: str) -> Command:
    mark = marker_path(state_dir, run_id, key)
    return cmd(IS_MARKED_TEMPLATE, running_path(mark), mark)
