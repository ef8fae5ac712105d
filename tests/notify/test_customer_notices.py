"""Customer notices never carry an error's text (review finding 11): a fake run whose cutover
fails with guest output full of internals, a real SMTP server (127.0.0.1) behind the notifier;
and the operator side, operator_tail."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from notify_helpers import LOOPBACK, Inbox

from upgrader import app
from upgrader.notify import Kind
from upgrader.phases import Phase
from upgrader.record import RunError
from upgrader.steps.notices import customer_reason, operator_tail
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)
WINDOW_AND_ANNOUNCE = """\
window: {start: 2026-11-27T09:30:00, duration: 2h, timezone: UTC}
announce:
  sender: ops@example.org
  to: [customers@example.com]
"""
GUEST_OUTPUT = "Stopping smtpd: DB_PASSWORD=hunter2 failed\n<script>alert(document.cookie)</script>\n/var/db/smtpd.pid: busy"
LEAKS = ("/etc/init.d/smtpd", "exited 1", "DB_PASSWORD", "hunter2", "<script>", "alert(", "smtpd.pid")


def test_rolled_back_notice_carries_no_command_or_guest_output(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("HOST", LOOPBACK), ("PORT", str(smtp_server.port)), ("HELO", "upgrader.test")):
        monkeypatch.setenv(f"UPGRADER_SMTP_{name}", value)
    with fake_world.change() as world:  # quiescing prod fails at cutover: rollback
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": GUEST_OUTPUT})
    plan = tmp_path / "leak.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h") + WINDOW_AND_ANNOUNCE)
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))

    assert record.phase == Phase.ROLLED_BACK and record.error is not None and record.error.phase == Phase.CUTOVER
    assert "`/etc/init.d/smtpd stop` exited 1" in record.error.message and "hunter2" in record.error.message
    assert [r.message["X-Upgrader-Kind"] for r in smtp_server.received] == ["announce", "rolled_back"]
    mail = smtp_server.received[-1].message
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    headers = "\n".join(f"{k}: {v}" for k, v in mail.items())
    for leak in LEAKS:
        assert leak not in text and leak not in html and leak not in headers, leak
    assert "(the switch to the upgraded system could not be completed)" in text
    assert mail["X-Upgrader-Reason"] == "the switch to the upgraded system could not be completed"


@pytest.mark.parametrize(
    ("kind", "phase", "expected"),
    [
        (Kind.ROLLED_BACK, Phase.VERIFY, "the post-upgrade checks did not pass"),
        (Kind.ROLLED_BACK, Phase.CUTOVER, "the switch to the upgraded system could not be completed"),
        (Kind.ROLLED_BACK, Phase.COMPLETED, "the upgrade could not be completed"),
        (Kind.ROLLED_BACK, None, "it was undone as a precaution"),
        (Kind.POSTPONED, Phase.UPGRADE, "the maintenance was called off: the upgrade could not be completed"),
        (Kind.POSTPONED, Phase.VALIDATE_STAGING, "the maintenance was called off: the upgraded system did not pass its checks"),
        (Kind.POSTPONED, Phase.PRESYNC, "the maintenance was called off: the preparation could not be completed"),
        (Kind.POSTPONED, None, "the maintenance was called off"),
        (Kind.DONE, None, None),
    ],
)
def test_customer_reason_is_a_fixed_sentence(kind: Kind, phase: Phase | None, expected: str | None) -> None:
    error = None if phase is None else RunError(phase=phase, message=f"`rm -rf /` exited 1:\n{GUEST_OUTPUT}", kind="StepFailed")
    assert customer_reason(kind, error) == expected


def test_operator_tail_trims_masks_and_strips_escapes() -> None:
    text = "\n".join(f"line {i}" for i in range(30)) + (
        "\nDB_PASSWORD=hunter2 api_token: abc123 user=bob\n\x1b]0;pwned title\x07\x1b[2Jcleared\r\n" + "x" * 500 + "\n\n"
    )
    tail = operator_tail(text, lines=4, width=50)
    rows = tail.split("\n")
    assert rows[0] == "... 29 earlier lines"
    assert rows[1:3] == ["line 29", "DB_PASSWORD=*** api_token: *** user=bob"]
    assert rows[3] == "cleared"
    assert rows[4] == "x" * 49 + "\u2026" and len(rows) == 5
    assert "\x1b" not in tail and "hunter2" not in tail and "pwned" not in tail


def test_operator_tail_keeps_a_short_error_as_is() -> None:
    assert operator_tail("`/etc/init.d/smtpd stop` exited 1:\nbusy") == "`/etc/init.d/smtpd stop` exited 1:\nbusy"
    assert operator_tail("") == ""
