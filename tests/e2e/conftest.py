"""The e2e scenarios change the lab (a twin serving as prod, faults set); leave it as the other
lab tests expect it: one pristine mailhost and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from upgrader.lab import Lab


@pytest.fixture(scope="module", autouse=True)
def pristine_lab_afterwards(lab: Lab) -> Iterator[None]:
    yield
    from test_workflow import fresh

    fresh(lab)
