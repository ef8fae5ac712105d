"""The package proxy for the isolated twin while its steps run (plan `staging.packages`;
upgrader/plan_packages.py). Opened on the twin's connection when a phase's steps on the twin
begin (upgrade, validate_staging) and closed after them; a resume, a retry or a reconnect opens it
again (a forward lives only as long as its SSH connection). Not journaled: it is no side effect on
any machine, only a property of this process's connection."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from upgrader.errors import ForwardRefused
from upgrader.events import Notice

if TYPE_CHECKING:
    from upgrader.plan import Plan
    from upgrader.steps.base import StepContext

ROLE = "staging"  # the twin, on the isolated staging segment


def describe(plan: "Plan") -> list[str]:
    """The --dry-run line(s) of the forward ([] without a package proxy)."""
    proxy = plan.staging.packages
    return [f"while the twin's steps run: {proxy.describe()}"] if proxy is not None else []


@contextmanager
def proxy_open(ctx: "StepContext") -> Iterator[dict[str, str]]:
    """The forward open on the twin's connection for the block; yields the environment for the
    twin's commands ({} without a package proxy). A forward the twin's sshd refuses is the step's
    failure (ForwardRefused, with its hint)."""
    proxy = ctx.plan.staging.packages
    if proxy is None:
        yield {}
        return
    forward = proxy.forward
    shell = ctx.ports.shells.connect(ROLE)
    try:
        shell.forward(forward)
    except ForwardRefused as exc:
        ctx.emit(Notice(f"package proxy: {exc.message}", "error"))
        raise
    ctx.emit(Notice(f"package proxy: the twin reaches {proxy.proxy_host}:{proxy.proxy_port} at {proxy.twin_url} "
                    f"(remote forward over upgrader's SSH connection)"))
    try:
        yield dict(proxy.env)
    finally:
        shell.unforward(forward)  # the role's connection: the same one, reconnected or not
