"""Operator notices through whole runs: fakes behind the VM ports, a real SMTP server (aiosmtpd)
and a real webhook receiver (http.server) behind the channels, all on 127.0.0.1. A run waiting
for approval and a rolled back run each tell the operators once by mail and once by signed
webhook, and the customers get nothing extra; dead channels are retried, journaled and never
stop the run; a process SIGKILLed in the middle of a delivery does not deliver it again."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from notify_helpers import LOOPBACK, SECRET, Inbox, Received, Receiver, free_port

from upgrader import app, app_due
from upgrader.adapters.factory import build_ports
from upgrader.errors import InputError
from upgrader.events import Event, Notice
from upgrader.notify.webhook import verify_signature
from upgrader.phases import Phase
from upgrader.plan import Plan
from upgrader.steps.base import Ports
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)
SECRET_ENV = "UPGRADER_TEST_HOOK_SECRET"
CUSTOMERS, ONCALL = "customers@example.com", "oncall@example.org"
ANNOUNCE = f"announce:\n  sender: ops@example.org\n  to: [{CUSTOMERS}]\n"
GUEST_OUTPUT = "Stopping smtpd: DB_PASSWORD=hunter2 failed\n/var/db/smtpd.pid: busy"


def operator_block(url: str) -> str:
    return (f"operator:\n  email: [{ONCALL}]\n  sender: upgrader@example.org\n"
            f"  webhook:\n    url: {url}\n    secret_env: {SECRET_ENV}\n")


def write_plan(tmp_path: Path, world: WorldFile, *parts: str) -> Path:
    path = tmp_path / "plan.yml"
    path.write_text(FAKE_PLAN.format(world=world.path, keep="1h") + "".join(parts))
    return path


def use(monkeypatch: pytest.MonkeyPatch, smtp_port: int) -> None:
    for name, value in (("HOST", LOOPBACK), ("PORT", str(smtp_port)), ("HELO", "upgrader.test")):
        monkeypatch.setenv(f"UPGRADER_SMTP_{name}", value)
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())


def for_operators(inbox: Inbox) -> list[Received]:
    return [r for r in inbox.received if r.message["X-Upgrader-Audience"] == "operator"]


def for_customers(inbox: Inbox) -> list[Received]:
    """Customer mails; and no mail crossed over to the other audience."""
    customers = [r for r in inbox.received if r.message["X-Upgrader-Audience"] is None]
    assert all(r.rcpt_tos == [CUSTOMERS] for r in customers)
    assert all(r.rcpt_tos == [ONCALL] for r in for_operators(inbox))
    return customers


def quick_retries(attempts: int) -> Callable[[Plan, str], Ports]:
    """The real ports factory, with the operator channels' retries short (no test waits 7 s)."""

    def build(plan: Plan, run_id: str) -> Ports:
        ports = build_ports(plan, run_id)
        if ports.operator is not None:
            ports.operator.attempts, ports.operator.max_wait = attempts, 0.01
        return ports

    return build


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_run_waiting_for_approval_tells_the_operators_once(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, smtp_server.port)
    plan = write_plan(tmp_path, fake_world, "approval: required\n",
                      "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n", ANNOUNCE,
                      operator_block(receiver.url))
    clock = Clock(T0)
    ctx = app.Context(RunStore(tmp_path / "state"), now=clock)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked and "approve" in record.parked

    [mail] = for_operators(smtp_server)
    assert mail.message["Subject"] == "[upgrader] mailhost waits for approval"
    body = mail.message.get_content()
    state = str((tmp_path / "state").resolve())
    assert f"upgrader --state-dir {state} approve mailhost" in body and "window 0: opens 2026-11-27 12:00 UTC" in body
    [request] = receiver.requests
    assert verify_signature(SECRET, request.timestamp, request.body, request.signature, now=time.time())
    hook = json.loads(request.body)
    assert (hook["audience"], hook["kind"], hook["host"], hook["run_id"]) == ("operator", "approval", "mailhost", record.run_id)
    assert hook["notice_id"] == f"{record.run_id}/operator.approval" == mail.message["X-Upgrader-Notice-Id"]
    assert f"upgrader --state-dir {state} approve mailhost" in hook["commands"]
    assert [r.message["X-Upgrader-Kind"] for r in for_customers(smtp_server)] == ["announce"]

    clock.now = T0 + dt.timedelta(minutes=30)
    app_due.run_due(ctx)
    app_due.run_due(ctx)  # still waiting: still one notice each
    assert len(for_operators(smtp_server)) == 1 and len(receiver.requests) == 1

    app.approve(ctx, "mailhost", "alice")
    clock.now = T0 + dt.timedelta(hours=2, minutes=5)  # in the window
    [due] = app_due.run_due(ctx)
    assert due.record is not None and due.record.phase == Phase.COMPLETED
    assert [r.message["X-Upgrader-Kind"] for r in for_customers(smtp_server)] == ["announce", "done"]
    assert len(for_operators(smtp_server)) == 1 and len(receiver.requests) == 1  # a good cutover tells no operator


def test_a_rollback_tells_the_operators_the_error_and_the_customers_a_fixed_reason(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, smtp_server.port)
    with fake_world.change() as world:  # quiescing prod fails at cutover: rollback
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": GUEST_OUTPUT})
    plan = write_plan(tmp_path, fake_world, "window: {start: 2026-11-27T09:30:00, duration: 2h, timezone: UTC}\n",
                      ANNOUNCE, operator_block(receiver.url))
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.ROLLED_BACK

    [mail] = for_operators(smtp_server)
    assert mail.message["Subject"] == "[upgrader] mailhost rolled back after a failure in cutover"
    body = mail.message.get_content()
    assert "`/etc/init.d/smtpd stop` exited 1" in body and "DB_PASSWORD=***" in body and "hunter2" not in body
    assert f"start mailhost --plan {plan}" in body
    [hook] = receiver.bodies
    assert hook["kind"] == "rolled_back" and hook["phase"] == "cutover"
    assert hook["error"] == "quiesce on prod: `/etc/init.d/smtpd stop` exited 1:"
    assert "hunter2" not in json.dumps(hook)
    customers = for_customers(smtp_server)
    assert [r.message["X-Upgrader-Kind"] for r in customers] == ["announce", "rolled_back"]
    assert all("smtpd" not in r.message.get_body(("plain",)).get_content() for r in customers)  # type: ignore[union-attr]


def test_dead_channels_are_retried_journaled_and_the_run_still_ends(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, free_port())  # nobody listens: SMTP and the webhook are both dead
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": GUEST_OUTPUT})
    plan = write_plan(tmp_path, fake_world, operator_block(f"http://{LOOPBACK}:{free_port()}/hook"))
    events: list[Event] = []
    ctx = app.Context(RunStore(tmp_path / "state"), [events.append], ports_factory=quick_retries(2), now=lambda: T0)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))

    assert record.phase == Phase.ROLLED_BACK and record.finished
    for channel in ("email", "webhook"):
        outputs = record.output(f"operator.rolled_back.{channel}")
        assert outputs["sent"] is False and "after 2 attempts" in outputs["error"], outputs
    said = [e.text for e in events if isinstance(e, Notice) and e.level == "warning" and "could not be sent" in e.text]
    assert len(said) == 2
    journal = ctx.store.journal("mailhost", record.run_id)
    assert [e["key"] for e in journal if e.get("kind") == "done" and str(e.get("key")).startswith("operator.")] == [
        "operator.rolled_back.email", "operator.rolled_back.webhook"]


def test_start_refuses_a_webhook_whose_secret_is_not_set(
    tmp_path: Path, fake_world: WorldFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    plan = write_plan(tmp_path, fake_world, operator_block("https://hooks.example.org/upgrader"))
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    with pytest.raises(InputError, match=f"{SECRET_ENV} .* is not set"):
        app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert ctx.store.runs("mailhost") == []


def test_killed_while_the_webhook_is_delivered_it_is_not_delivered_again(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver
) -> None:
    """The receiver SIGKILLs the orchestrator as the POST arrives - before the answer and before the
    journal said done. The resumed run must not POST it again, nor mail it again."""
    plan = write_plan(tmp_path, fake_world, "approval: required\n",
                      "window: {start: 2030-01-04T12:00:00, duration: 1h, timezone: UTC}\n", operator_block(receiver.url))
    victim: list[subprocess.Popen[str]] = []

    def kill() -> None:
        if victim and victim[0].poll() is None:
            victim[0].send_signal(signal.SIGKILL)
            victim[0].wait()

    receiver.on_post = kill
    env = {**os.environ, "UPGRADER_SMTP_HOST": LOOPBACK, "UPGRADER_SMTP_PORT": str(smtp_server.port),
           "UPGRADER_SMTP_HELO": "t", SECRET_ENV: SECRET.decode()}
    cmd = [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(tmp_path / "state"), "-q"]
    victim.append(subprocess.Popen([*cmd, "start", "mailhost", "--plan", str(plan)], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    victim[0].communicate(timeout=120)
    assert victim[0].returncode == -signal.SIGKILL
    receiver.on_post = None
    done = subprocess.run([*cmd, "resume", "mailhost"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "may have been sent before the crash; not sent again" in done.stdout
    assert len(receiver.requests) == 1 and len(for_operators(smtp_server)) == 1


def test_a_failed_run_tells_the_operators(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback whose restart of the services on the old VM fails three times ends `failed`:
    the engine tells the operators once, right before the transition."""
    use(monkeypatch, smtp_server.port)
    with fake_world.change() as world:
        world["commands"][:0] = [{"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": "busy"},
                                 {"match": "smtpd start", "role": "prod", "rc": 1, "stdout": "DB_PASSWORD=hunter2 bad"}]
    plan = write_plan(tmp_path, fake_world, operator_block(receiver.url))
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    while record.phase == Phase.ROLLING_BACK:
        record = app.resume(ctx, "mailhost")
    assert record.phase == Phase.FAILED and record.cleanup_error is not None
    rolled_back_notices = [r for r in for_operators(smtp_server) if r.message["X-Upgrader-Kind"] == "rolled_back"]
    assert rolled_back_notices == []  # the rollback never ended

    [mail] = for_operators(smtp_server)
    assert mail.message["Subject"] == "[upgrader] mailhost failed in rolling_back: a human must look"
    body = mail.message.get_content()
    assert "`/etc/init.d/smtpd start` exited 1" in body and "DB_PASSWORD=***" in body and "hunter2" not in body
    [hook] = receiver.bodies
    assert hook["kind"] == "failed" and hook["phase"] == "rolling_back"
    state = tmp_path / "state"
    assert hook["commands"] == [f"upgrader --state-dir {state} status mailhost", f"upgrader --state-dir {state} show mailhost",
                                f"virsh -c fake://{fake_world.path} list --all"]


def test_a_held_run_tells_the_operators_each_time_it_is_held(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, smtp_server.port)
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1, "stdout": "port mailfilter: DB_PASSWORD=hunter2"})
    plan = write_plan(tmp_path, fake_world, "window: {start: 2026-11-27T09:30:00, duration: 2h, timezone: UTC}\n",
                      ANNOUNCE, operator_block(receiver.url))  # an announce block needs a window
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.HELD
    [mail] = for_operators(smtp_server)
    assert mail.message["Subject"] == "[upgrader] mailhost held at upgrade[1]"
    body = mail.message.get_content()
    state = tmp_path / "state"
    assert f"upgrader --state-dir {state} retry mailhost" in body and "DB_PASSWORD=***" in body and "hunter2" not in body
    [hook] = receiver.bodies
    assert hook["kind"] == "held" and hook["step"] == "upgrade[1]"
    assert f"upgrader --state-dir {state} ssh mailhost --twin" in hook["commands"]
    assert for_customers(smtp_server) == []  # customers hear nothing of a held run
    record = app.retry(ctx, "mailhost", "alice")  # not fixed: held again, told again
    assert record.phase == Phase.HELD
    assert len(for_operators(smtp_server)) == 2 and len(receiver.requests) == 2
    with fake_world.change() as world:
        world["commands"] = [c for c in world["commands"] if c.get("rc") != 1]
    assert app.retry(ctx, "mailhost", "alice").phase == Phase.COMPLETED
    assert len(for_operators(smtp_server)) == 2  # a good run tells no operator


def test_a_network_only_rollback_tells_the_operators_where_the_data_may_be(
    tmp_path: Path, fake_world: WorldFile, smtp_server: Inbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new prod died: the rollback gives the network back without the reverse sync and keeps
    the twin; the operators' notice says which data may exist only on the twin."""
    use(monkeypatch, smtp_server.port)
    plan = write_plan(tmp_path, fake_world, operator_block(receiver.url))
    ctx = app.Context(RunStore(tmp_path / "state"), now=lambda: T0)
    assert app.start(ctx, app.StartOptions("mailhost", str(plan))).phase == Phase.COMPLETED
    with fake_world.change() as world:  # the new prod crashed
        world["domains"]["mailhost-twin"]["running"] = False
    record = app.rollback(ctx, "mailhost")
    assert record.phase == Phase.ROLLED_BACK and record.warnings
    [mail] = for_operators(smtp_server)
    body = mail.message.get_content()
    assert mail.message["Subject"] == "[upgrader] mailhost rolled back"
    assert "may exist only on mailhost-twin" in body and "/var/mail/" in body
    [hook] = receiver.bodies
    assert hook["kind"] == "rolled_back" and any("may exist only on mailhost-twin" in n for n in hook["notes"])
