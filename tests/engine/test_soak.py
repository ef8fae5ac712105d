"""CI subset of the random-kill soak (tools/soak.py --kills 300 is the full one)."""

from __future__ import annotations

from upgrader.testing.soak import KINDS, soak


def test_random_kills_over_every_kind_of_run_end_where_they_should() -> None:
    result = soak(30, seed=7)
    assert result.kills >= 30 and result.interrupted > 0
    assert {t.kind for t in result.trials} == {k.name for k in KINDS}
    assert result.failures == [], "\n".join(f"{t.kind}: {t.commands}: {t.problem}" for t in result.failures)
