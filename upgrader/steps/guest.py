"""Commands the orchestrator itself runs on guests: templates with quoted arguments. The fakes
key their canned behaviour on these exact templates."""

from __future__ import annotations

from upgrader.ports import Command, cmd, running_path

# Wait while the marked command's shell (pid in the .running file) is still alive - it may have
# outlived a lost connection or a killed orchestrator - then report whether it finished.
IS_MARKED_TEMPLATE = 'while [ -f {0} ] && kill -0 "$(cat {0})" 2>/dev/null; do sleep 1; done; test -e {1}'


# Flush the guest's buffers to disk (before a checkpoint of the twin's disks).
FLUSH_TEMPLATE = "sync"


def flush() -> Command:
    return Command(FLUSH_TEMPLATE)


def marker_path(state_dir: str, run_id: str, key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"{state_dir.rstrip('/')}/{run_id}/{safe}.done"


def is_marked(state_dir: str, run_id: str, key: str) -> Command:
    mark = marker_path(state_dir, run_id, key)
    return cmd(IS_MARKED_TEMPLATE, running_path(mark), mark)


# ip_move: add the service address unless present, then gratuitous ARPs (busybox or iputils
# arping): one now, the rest in the background (they are a second apart; the cutover goes on)
CLAIM_ADDRESS_TEMPLATE = (
    "IF={0}; [ -n \"$IF\" ] || IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); "
    "ip -o addr show dev \"$IF\" | grep -qwF {1} || ip addr add {2} dev \"$IF\" || exit 1; "
    "arping -U -c 1 -I \"$IF\" {1} >/dev/null 2>&1 || exit 2; "
    "( arping -U -c {3} -I \"$IF\" {1} >/dev/null 2>&1 & ); "
    "echo {2} on $IF"
)


def claim_address(address: str, interface: str | None, garps: int) -> Command:
    return cmd(CLAIM_ADDRESS_TEMPLATE, interface or "", address.split("/")[0], address, str(max(1, garps - 1)))
