"""An `ansible:` upgrade step: the plan's playbook run with ansible-playbook against the twin over
the plan's pinned SSH path to it (ports.PlaybookRunner; adapters/ansible_runner.py).

Like a `run:` step it is one `once_reconnecting`: a failed play (a failed task, ansible-playbook's
own error) fails the step with a Result (command, exit code, output tail) - held for repair, or
aborted, by the plan's `on_failure` - and `upgrader retry` runs the playbook again. A step in doubt
(the orchestrator died while the playbook ran, or before its `done` was journaled) is run again
too: a playbook describes a state, not a sequence of commands, and Ansible's modules only change
what is not yet as described (the probe of an `ansible:` step is the playbook itself). The runner
never starts it while an earlier ansible-playbook of the run still runs (one that outlived a
killed orchestrator holds the run's playbook.lock). A twin that became unreachable mid-play is a
lost connection: reconnect and run again, up to three times.

The done outputs are typed (`PlaybookOutputs`): ansible-playbook's exit code and the PLAY RECAP
counts of the host."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from upgrader.durations import format_duration
from upgrader.errors import InfraError, StepFailed
from upgrader.ports import PackageProxy, Playbook, PlaybookResult

if TYPE_CHECKING:
    from upgrader.plan import AnsibleStep, Plan
    from upgrader.steps.base import StepContext

__all__ = ["PlaybookOutputs", "describe", "playbook_of", "run_playbook_step", "WORKDIR"]

WORKDIR = "ansible"  # in the run's directory


class PlaybookOutputs(BaseModel):
    """What an `ansible:` step journals as done."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rc: int
    playbook: str
    ok: int = 0
    changed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @classmethod
    def of(cls, playbook: Playbook, result: PlaybookResult) -> "PlaybookOutputs":
        counts: dict[str, int] = {}
        for host in result.recap:
            for name in ("ok", "changed", "skipped", "rescued", "ignored"):
                counts[name] = counts.get(name, 0) + int(getattr(host, name))
        return cls(rc=result.result.rc, playbook=str(playbook.path), **counts)


def playbook_of(plan: "Plan", step: "AnsibleStep") -> Playbook:
    spec = step.ansible
    return Playbook(plan.resolve_path(spec.playbook), dict(spec.extra_vars), tuple(spec.tags), tuple(spec.skip_tags),
                    tuple(spec.groups))


def describe(plan: "Plan", step: "AnsibleStep") -> str:
    spec = step.ansible
    only = f" --tags {','.join(spec.tags)}" if spec.tags else ""
    skip = f" --skip-tags {','.join(spec.skip_tags)}" if spec.skip_tags else ""
    return (f"ansible-playbook {plan.resolve_path(spec.playbook)}{only}{skip} against the twin over ssh.staging "
            f"(timeout {format_duration(step.timeout)}; run again on retry or when in doubt: playbooks are idempotent)")


def _failure(key: str, step: "AnsibleStep", result: PlaybookResult) -> StepFailed:
    recap = "; ".join(f"{h.host}: ok={h.ok} changed={h.changed} unreachable={h.unreachable} failed={h.failed}"
                      for h in result.recap) or "no PLAY RECAP (the playbook did not run)"
    return StepFailed(
        f"{key} `{step.label}`: ansible-playbook exited {result.result.rc} ({recap}):\n{result.result.tail(15)}",
        hint="prod keeps serving; the run is held with the twin kept for repair (plan `on_failure: hold`) or aborted "
             "(`on_failure: abort`); after a fix, `upgrader retry HOST` runs the playbook again",
        result=result.result,
    )


def run_playbook_step(ctx: "StepContext", key: str, step: "AnsibleStep", proxy: PackageProxy | None = None) -> None:
    """Run the step's playbook once (in the journal's sense). `proxy`: the plan's package proxy as
    the twin reaches it (forwarded over the playbook's SSH connections, `upgrader_package_proxy`)."""
    runner = ctx.ports.playbooks
    if runner is None:
        raise InfraError("no playbook runner: this run's ports cannot run an `ansible:` step")
    playbook = playbook_of(ctx.plan, step)

    def run(_: dict[str, Any]) -> dict[str, Any]:
        if proxy is not None and proxy.already_forwarded:
            # the forward lives on upgrader's own connection to the twin: make sure that one is up
            # (a reconnect asks for the forward again) before the playbook's apt needs it
            ctx.ports.shells.connect("staging").boot_id()
        result = runner.run_playbook("staging", playbook, workdir=ctx.run_dir / WORKDIR,
                                     timeout=step.timeout.total_seconds(), proxy=proxy,
                                     on_output=ctx.output_sink(key))
        if not result.ok:
            raise _failure(key, step, result)
        return PlaybookOutputs.of(playbook, result).model_dump()

    def probe(_: dict[str, Any]) -> dict[str, Any] | None:
        return None  # in doubt: run the playbook again (idempotent; the runner waits for one still running)

    ctx.once_reconnecting(key, step.label, run, probe)
