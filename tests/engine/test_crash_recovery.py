"""The recovery paths get the forward path's crash matrix: rollback, abort and decommission are
SIGKILLed inside (real CLI subprocesses, pause points), then resumed. Each must end where it
should with every side effect done exactly once and no mail lost or image leaked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from upgrader.testing.crash import CHECKS, Cli, no_client_hold, op_counts, world_of
from upgrader.testing.fakes import WorldFile

NEW_PROD_MAIL = {"match": "smtpd start", "role": "prod", "set": {"services": True}, "add_mail": 3}


@dataclass(frozen=True)
class Path_:
    """One recovery path: commands run to completion first, the command that is killed, the
    commands that recover, and the end it must reach."""

    setup: tuple[tuple[str, ...], ...]
    killed: tuple[str, ...]
    recover: tuple[tuple[str, ...], ...]
    end: str
    world: dict[str, Any] = field(default_factory=dict)  # changes to the fake world first


START = ("start", "mailhost", "--plan", "{plan}")
RESUME = ("resume", "mailhost")
ROLLBACK = Path_(setup=(START,), killed=("rollback", "mailhost", "--yes"), recover=(RESUME,), end="rolled_back")
AUTO_ROLLBACK = Path_(setup=(), killed=START, recover=(RESUME,), end="rolled_back", world={"faults": ["probe:prod"]})
ABORT = Path_(setup=(), killed=START, recover=(RESUME,), end="aborted",
              world={"commands": [{"match": "labos-update install", "rc": 1}]})
# before the old VM is touched (decommission.destroy) nothing is committed: the operator asks again
DECOMMISSION = Path_(setup=(START,), killed=("decommission", "mailhost", "--yes"), recover=(RESUME, ("decommission", "mailhost", "--yes")),
                     end="decommissioned")

KILL_POINTS: list[tuple[str, Path_, str]] = [
    ("begin:rollback.plan", ROLLBACK, "nothing decided yet"),
    ("done:rollback.plan", ROLLBACK, "decided (moved, reachable), nothing done"),
    ("after:run:/etc/init.d/smtpd stop", ROLLBACK, "new prod quiesced"),
    ("after:move_nic:stg-net", ROLLBACK, "twin off the production segment, old VM still link-down"),
    ("after:set_link:mailhost", ROLLBACK, "old VM link up, not journaled"),
    ("during:sync:final", ROLLBACK, "inside the reverse sync: its key authorised on the new prod"),
    ("after:sync:final", ROLLBACK, "reverse sync done, not journaled"),
    ("after:run:/etc/init.d/smtpd start", ROLLBACK, "old VM's services back, not journaled"),
    ("after:destroy:mailhost-twin", ROLLBACK, "twin stopped"),
    ("after:undefine_domain", ROLLBACK, "twin undefined, its images not yet deleted (the review's never-finishing rollback)"),
    ("after:undefine", ROLLBACK, "twin gone, not journaled"),
    ("during:merge_back", ROLLBACK, "old VM pivoted onto its base, the overlay not yet deleted"),
    ("after:merge_back", ROLLBACK, "old VM back on its base, not journaled"),
    ("after:release_claim:mailhost", ROLLBACK, "claim released, not journaled"),
    ("begin:rollback.plan", AUTO_ROLLBACK, "verify failed, the automatic rollback begins"),
    ("after:move_nic:stg-net", AUTO_ROLLBACK, "automatic rollback: twin moved back"),
    ("begin:rollback.release_clients", AUTO_ROLLBACK, "the service never came back: the old VM still held, link down"),
    ("after:release_clients:mailhost", AUTO_ROLLBACK, "automatic rollback: old VM released, the filter still defined"),
    ("begin:abort.remove_twin", ABORT, "upgrade failed, abort's cleanup begins"),
    ("after:undefine_domain", ABORT, "abort: twin undefined, images not deleted"),
    ("during:merge_back", ABORT, "abort: pivoted onto the base, the overlay not yet deleted (found on the lab)"),
    ("after:merge_back", ABORT, "abort: overlay merged, not journaled"),
    ("after:release_claim:mailhost", ABORT, "abort: claim released, not journaled"),
    ("after:flatten", DECOMMISSION, "new prod flattened, not journaled"),
    ("begin:decommission.host_settings", DECOMMISSION, "about to read the old VM's autostart"),
    ("done:decommission.host_settings", DECOMMISSION, "old VM's autostart journaled, nothing stopped yet"),
    ("after:destroy:mailhost", DECOMMISSION, "old VM stopped, not journaled"),
    ("done:decommission.undefine", DECOMMISSION, "old VM gone, its autostart not yet on the new prod"),
    ("begin:decommission.autostart", DECOMMISSION, "about to set the new prod's autostart"),
    ("after:set_autostart:mailhost-twin", DECOMMISSION, "new prod's autostart set, not journaled"),
    ("done:decommission.autostart", DECOMMISSION, "new prod's autostart journaled, claim not yet released"),
    ("after:release_claim:mailhost-twin", DECOMMISSION, "new prod's claim released, not journaled"),
]


def _args(command: tuple[str, ...], plan: Path) -> list[str]:
    return [a.format(plan=plan) for a in command]


def drive(cli: Cli, plan: Path, path: Path_, point: str, reached: Path) -> None:
    for command in path.setup:
        done = cli.run(*_args(command, plan))
        assert done.rc == 0, done
    cli.kill_at(point, *_args(path.killed, plan), reached=reached)
    outputs = [cli.run(*_args(command, plan)) for command in path.recover]
    record = cli.record()
    assert record["phase"] == path.end, "\n".join(map(str, outputs))
    assert record["finished"] and record["cleanup_error"] is None, record


@pytest.mark.parametrize(("point", "path", "why"), KILL_POINTS,
                         ids=[f"{p.end}-{point}" for point, p, _ in KILL_POINTS])
def test_recovery_path_killed_and_resumed(tmp_path: Path, fake_world: WorldFile, abort_plan: Path, point: str,
                                          path: Path_, why: str) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, NEW_PROD_MAIL)
        for key, items in path.world.items():
            world[key] = list(items) + list(world[key])
    drive(Cli(tmp_path / "state", tmp_path / "locks"), abort_plan, path, point, tmp_path / "reached")
    CHECKS[path.end](world_of(fake_world))


@pytest.mark.parametrize("point", ["begin:rollback.release_clients", "after:release_clients:mailhost", "done:rollback.release_clients"])
def test_final_sync_fails_while_held_killed_in_the_release(tmp_path: Path, fake_world: WorldFile, abort_plan: Path,
                                                           point: str) -> None:
    """The final sync fails with prod held and quiesced: the rollback releases it (killed in the
    release, resumed) before the network step, and the old VM ends with no hold and serving."""
    with fake_world.change() as world:
        world["faults"].append("sync:final")
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at(point, *_args(START, abort_plan), reached=tmp_path / "reached")
    done = cli.run(*RESUME)
    record = cli.record()
    assert record["phase"] == "rolled_back" and record["finished"] and record["cleanup_error"] is None, done
    world = world_of(fake_world)
    no_client_hold(world)
    counts = op_counts(world)
    assert (counts["hold_clients"], counts["release_clients"], counts["undefine_client_hold"]) == (1, 1, 1)
    assert world["domains"]["mailhost"]["links"] == {"52:54:00:12:34:56": True} and list(world["domains"]) == ["mailhost"]
    run_dir = sorted(p for p in (tmp_path / "state" / "mailhost").iterdir() if p.is_dir())[-1]
    entries = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]
    journal = [(e["kind"], e.get("key")) for e in entries]
    assert journal.index(("done", "rollback.release_clients")) < journal.index(("begin", "rollback.network"))
