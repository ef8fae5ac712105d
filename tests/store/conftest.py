from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from upgrader.record import RunRecord
from upgrader.store import RunStore


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "state")


@pytest.fixture
def make_record() -> Callable[..., RunRecord]:
    counter = iter(range(1000))

    def make(host: str = "mailhost", minute: int | None = None, **fields: object) -> RunRecord:
        n = next(counter) if minute is None else minute
        run_id = f"20261124T20{n:02d}00Z-{n:04x}"
        base = {"run_id": run_id, "host": host, "plan_path": "plans/mailhost.yaml", "plan_sha256": "ab" * 32}
        return RunRecord.model_validate({**base, **fields})

    return make


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
