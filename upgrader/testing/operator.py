"""Fake operator channels for tests: each delivery does what the next entry of its script says
and is recorded; a delivery the script does not expect fails the test (AssertionError, which
tell_operator does not catch), so a repeated or unexpected operator notice cannot pass unnoticed.

    email = FakeOperatorChannel("email", ["ok"])                          # exactly one delivery
    webhook = FakeOperatorChannel("webhook", [InfraError("down")] * 2)   # two failing attempts
    ports.operator = fake_channels(email, webhook, attempts=2)
    ...
    email.assert_done()                                                   # the script was used up
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from upgrader.notify.operator import OperatorChannel, OperatorChannels, OperatorEvent

Action = Exception | Literal["ok", "killed"]


class KilledDuringDelivery(BaseException):
    """The process "dies" right after the receiver got the notice, before the sender saw that it
    did (like a SIGKILL there): nothing catches it, the journal keeps `begin` without `done`."""


@dataclass
class FakeOperatorChannel:
    name: str
    script: list[Action]
    sent: list[tuple[OperatorEvent, str]] = field(default_factory=list)  # (event, notice_id) received
    calls: int = 0

    def deliver(self, event: OperatorEvent, notice_id: str) -> str:
        if not self.script:
            raise AssertionError(f"unexpected delivery #{self.calls + 1} on the fake operator {self.name} channel: "
                                 f"{event.summary} ({notice_id}); its script is used up")
        action = self.script.pop(0)
        self.calls += 1
        if isinstance(action, Exception):
            raise action
        self.sent.append((event, notice_id))
        if action == "killed":
            raise KilledDuringDelivery(f"killed while delivering {notice_id} by {self.name}")
        return f"fake-{self.name}-{len(self.sent)}"

    def describe(self) -> str:
        return f"fake {self.name}"

    def assert_done(self) -> None:
        assert not self.script, f"the fake operator {self.name} channel still expected {self.script}"


def fake_channels(email: OperatorChannel | None = None, webhook: OperatorChannel | None = None,
                  *, attempts: int = 3) -> OperatorChannels:
    """OperatorChannels over fakes (or any channel), retrying without waiting."""
    return OperatorChannels(email=email, webhook=webhook, attempts=attempts, max_wait=0.0)
