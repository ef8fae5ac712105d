"""The forecast's "last pre-sync pass" is what the final sync costs inside the window (review M3):
the pass's rsync plus its close, not its set-up (the cutover opens its sync session before the
quiesce)."""

from __future__ import annotations

from pathlib import Path

from upgrader.forecast import forecast
from upgrader.testing.fake_syncer import FakeSyncer
from upgrader.testing.fakes import WorldFile, new_world


def test_the_last_pass_counts_rsync_and_close_not_the_set_up() -> None:
    outputs = {
        "presync.pass[1]": {"files": 40, "bytes": 1, "seconds": 0.9, "setup_seconds": 1.0, "close_seconds": 0.2},
        "presync.pass[2]": {"files": 3, "bytes": 1, "seconds": 0.25, "setup_seconds": 0.95, "close_seconds": 0.15},
    }
    got = forecast(outputs, strategy="mac_move", quiesce_commands=0, resume_commands=0)
    assert got is not None and got.last_pass == 0.4 and got.last_pass_key == "presync.pass[2]"
    assert got.total == 0.5  # + the takeover estimate, 0.1


def test_a_pass_recorded_before_the_split_counts_its_seconds() -> None:
    """An older run's pass: `seconds` was open + pass + close, and there is nothing else."""
    got = forecast({"presync.pass[1]": {"files": 3, "bytes": 1, "seconds": 1.3}}, strategy="mac_move",
                   quiesce_commands=0, resume_commands=0)
    assert got is not None and got.last_pass == 1.3


def test_the_fake_syncer_reports_a_set_up_and_a_close(tmp_path: Path) -> None:
    """The fake's `sync` says what a real one does, so engine tests see the forecast leave the set-up out."""
    data = new_world()
    data["domains"]["mailhost-twin"] = dict(data["domains"]["mailhost"], nics={"52:54:00:00:00:01": "staging-net"}, guest="g1")
    data["guests"]["g1"] = dict(data["guests"]["g0"], mail=[])
    world = WorldFile(tmp_path / "world.json")
    world.write(data)
    stats = FakeSyncer(world, {"prod": "prod-net", "staging": "staging-net"}).sync("prod", "staging", [("/var/mail", [])], final=False)
    assert stats.setup_seconds > 0 and stats.close_seconds > 0 and stats.seconds < stats.setup_seconds
    outputs = {"presync.pass[1]": {"files": stats.files, "bytes": stats.bytes, "seconds": stats.seconds,
                                   "setup_seconds": stats.setup_seconds, "close_seconds": stats.close_seconds}}
    got = forecast(outputs, strategy="mac_move", quiesce_commands=0, resume_commands=0)
    assert got is not None and got.last_pass == round(stats.seconds + stats.close_seconds, 3)
