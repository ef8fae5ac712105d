"""wait_job's pivot (libvirt_common.py): a commit whose cur == end before QEMU declared it ready
must be pivoted once it is ready, not fail the merge back (found on the lab, rollback under load)."""

from __future__ import annotations

import libvirt
import pytest

import upgrader.adapters.libvirt_common as common
from upgrader.adapters.libvirt_common import wait_job


class Job:
    """One disk's block job as libvirt reports it; the first `not_ready` pivots are refused."""

    def __init__(self, not_ready: int, error: str = "block copy still active: block job 'commit-vda' not ready for pivot yet") -> None:
        self.not_ready, self.error, self.pivots, self.done = not_ready, error, 0, False

    def name(self) -> str:
        return "mailhost"

    def blockJobInfo(self, disk: str, flags: int) -> dict[str, int]:  # noqa: N802 (libvirt's name)
        assert disk == "vda" and flags == 0
        return {} if self.done else {"type": 4, "cur": 100, "end": 100}

    def blockJobAbort(self, disk: str, flags: int) -> None:  # noqa: N802
        assert flags == libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
        self.pivots += 1
        if self.pivots <= self.not_ready:
            raise libvirt.libvirtError(self.error)
        self.done = True


def test_a_pivot_refused_as_not_ready_yet_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "JOB_POLL", 0.001)
    job = Job(not_ready=2)
    wait_job(job, "vda", pivot=True)  # type: ignore[arg-type]
    assert job.pivots == 3 and job.done


def test_any_other_pivot_error_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "JOB_POLL", 0.001)
    job = Job(not_ready=1, error="internal error: unable to execute QEMU command 'block-job-complete'")
    with pytest.raises(libvirt.libvirtError, match="block-job-complete"):
        wait_job(job, "vda", pivot=True)  # type: ignore[arg-type]
    assert job.pivots == 1
