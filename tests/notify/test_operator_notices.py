"""Operator notices piece by piece: tell_operator over strict fakes (once per channel, not again
after a crash, retried, a dead channel journaled and the run going on), the events and their
commands, the mail and the JSON, and the channels a plan's operator block becomes - the mail
against a real SMTP server and the webhook against a real HTTP receiver, both on 127.0.0.1."""

from __future__ import annotations

import json
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from notify_helpers import SECRET, Inbox, Receiver

from upgrader.errors import InfraError
from upgrader.events import Event, Notice
from upgrader.notify import DeliveryRefused, SmtpNotifier
from upgrader.notify.operator import (
    BrokenChannel,
    EmailChannel,
    OperatorEvent,
    OperatorKind,
    WebhookChannel,
    channels_from_plan,
    mail,
    payload,
)
from upgrader.notify.webhook import WebhookNotifier, verify_signature
from upgrader.phases import Phase
from upgrader.plan import Plan, parse_plan
from upgrader.record import RunError, RunRecord
from upgrader.steps.base import Journal, Ports, StepContext
from upgrader.steps.operator_notice import (
    held_event,
    held_key,
    operator_event_for_failure,
    rolled_back_event,
    tell_operator,
)
from upgrader.testing import fakes
from upgrader.testing.fakes import WorldFile
from upgrader.testing.operator import FakeOperatorChannel, KilledDuringDelivery, fake_channels
from upgrader.testing.scenario import FAKE_PLAN

RUN_ID = "20261127T100000Z-ab12"
STATE_DIR = "/var/lib/upgrader"
PLAN = parse_plan(FAKE_PLAN.format(world="/nonexistent/world.json", keep="1h"), "plan.yml")
GUEST_OUTPUT = "Stopping smtpd\nDB_PASSWORD=hunter2 failed\n\x1b]0;pwned\x07\x1b[2Jdisk full"
OPERATOR_BLOCK = """\
operator:
  email: [oncall@example.org]
  sender: upgrader@example.org
  webhook:
    url: {url}
    {secret}
"""


class ListJournal:
    """The journal's file, as a list of entries (JSON round-tripped like the real one)."""

    def __init__(self, entries: list[dict[str, Any]] | None = None) -> None:
        self.entries = entries if entries is not None else []

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(json.loads(json.dumps(entry)))


class Refusing:
    """A Notifier that must not be reached."""

    def send(self, message: EmailMessage) -> str:
        raise AssertionError(f"unexpected send: {message['Subject']}")


def make_plan(tmp_path: Path, world: WorldFile, block: str = "") -> Plan:
    path = tmp_path / "plan.yml"
    path.write_text(FAKE_PLAN.format(world=world.path, keep="1h") + block)
    return parse_plan(path.read_text(), str(path))


def record(host: str = "mailhost", **kw: Any) -> RunRecord:
    return RunRecord(run_id=RUN_ID, host=host, plan_path="/srv/plans/mail host.yml", plan_sha256="0" * 64, **kw)


def context(plan: Plan, ports: Ports, journal: ListJournal, events: list[Event], rec: RunRecord | None = None) -> StepContext:
    return StepContext(plan, rec or record(), ports, Journal.from_entries(journal, list(journal.entries)), events.append,
                       state_dir=STATE_DIR)


@pytest.fixture
def plan(tmp_path: Path, fake_world: WorldFile) -> Plan:
    return make_plan(tmp_path, fake_world)


def event() -> OperatorEvent:
    return held_event(record(error=RunError(phase=Phase.UPGRADE, message="x")), PLAN,
                      "upgrade[4]", "`labos-update install` exited 1:\n" + GUEST_OUTPUT, None,
                      checkpoints=["upgrade[0]", "upgrade[4]"], state_dir=STATE_DIR)


def warnings(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]


# -- tell_operator ------------------------------------------------------------------------------


def test_each_channel_gets_the_notice_once(plan: Plan) -> None:
    email, webhook = FakeOperatorChannel("email", ["ok"]), FakeOperatorChannel("webhook", ["ok"])
    ports = fakes.build(plan)
    ports.operator = fake_channels(email, webhook)
    journal, events = ListJournal(), list[Event]()
    ctx = context(plan, ports, journal, events)
    tell_operator(ctx, held_key(1), event())
    tell_operator(ctx, held_key(1), event())  # again (a resume, run-due): the journal says done
    assert [n for _, n in email.sent] == [n for _, n in webhook.sent] == [f"{RUN_ID}/operator.held[1]"]
    email.assert_done()
    webhook.assert_done()
    done = {e["key"]: e["outputs"] for e in journal.entries if e["kind"] == "done"}
    assert done == {"operator.held[1].email": {"sent": True, "to": "fake email", "id": "fake-email-1"},
                    "operator.held[1].webhook": {"sent": True, "to": "fake webhook", "id": "fake-webhook-1"}}
    # a resumed process reads the same journal: nothing is sent (the fakes would fail the test)
    tell_operator(context(plan, ports, ListJournal(list(journal.entries)), []), "operator.held[1]", event())


def test_a_notice_in_flight_when_the_process_died_is_not_sent_again(plan: Plan) -> None:
    ports = fakes.build(plan)
    ports.operator = fake_channels(FakeOperatorChannel("email", ["killed"]), FakeOperatorChannel("webhook", []))
    journal = ListJournal()
    with pytest.raises(KilledDuringDelivery):
        tell_operator(context(plan, ports, journal, []), "operator.approval", event())
    assert [e["kind"] for e in journal.entries] == ["begin"]  # begun, never done

    resumed_email, resumed_webhook = FakeOperatorChannel("email", []), FakeOperatorChannel("webhook", ["ok"])
    ports.operator = fake_channels(resumed_email, resumed_webhook)
    events: list[Event] = []
    tell_operator(context(plan, ports, journal, events), "operator.approval", event())
    done = {e["key"]: e["outputs"] for e in journal.entries if e["kind"] == "done"}
    assert done["operator.approval.email"] == {"sent": "unknown"}
    assert resumed_email.calls == 0 and len(resumed_webhook.sent) == 1
    assert any("may have been sent before the crash; not sent again" in w for w in warnings(events))


def test_a_dead_channel_is_retried_then_journaled_and_the_other_still_delivers(plan: Plan) -> None:
    email = FakeOperatorChannel("email", [InfraError("connection refused", hint="is the relay up?")] * 3)
    webhook = FakeOperatorChannel("webhook", ["ok"])
    ports = fakes.build(plan)
    ports.operator = fake_channels(email, webhook, attempts=3)
    journal, events = ListJournal(), list[Event]()
    tell_operator(context(plan, ports, journal, events), "operator.rolled_back", event())  # does not raise
    email.assert_done()
    assert email.calls == 3 and email.sent == [] and len(webhook.sent) == 1
    failed = next(e["outputs"] for e in journal.entries if e["kind"] == "done" and e["key"] == "operator.rolled_back.email")
    assert failed["sent"] is False and "after 3 attempts: connection refused" in failed["error"]
    assert any("could not be sent" in w and "the run goes on" in w for w in warnings(events))


def test_a_refusal_is_not_retried(plan: Plan) -> None:
    webhook = FakeOperatorChannel("webhook", [DeliveryRefused("webhook http://127.0.0.1/x answered 401 Unauthorized")])
    ports = fakes.build(plan)
    ports.operator = fake_channels(webhook=webhook, attempts=5)
    journal: ListJournal = ListJournal()
    tell_operator(context(plan, ports, journal, []), "operator.failed", event())
    assert webhook.calls == 1
    assert journal.entries[-1]["outputs"]["sent"] is False


def test_without_an_operator_block_nothing_happens(plan: Plan) -> None:
    journal = ListJournal()
    tell_operator(context(plan, fakes.build(plan), journal, []), "operator.failed", event())
    assert journal.entries == []


def test_a_value_that_would_inject_a_header_is_a_failed_delivery_not_a_crash(plan: Plan) -> None:
    ports = fakes.build(plan)
    ports.operator = fake_channels(email=EmailChannel(Refusing(), "upgrader@example.org", ["oncall@example.org"]))
    journal, events = ListJournal(), list[Event]()
    bad = held_event(record(host="mailhost\nBcc: everyone@example.com"), plan, "upgrade[0]", "boom", None)
    tell_operator(context(plan, ports, journal, events), "operator.held[1]", bad)
    outputs = journal.entries[-1]["outputs"]
    assert outputs["sent"] is False and "header injection" in outputs["error"]


def test_a_held_event_gives_the_step_the_cleaned_error_and_exact_commands() -> None:
    held = event()
    assert held.kind == OperatorKind.HELD and held.phase == Phase.UPGRADE and held.step == "upgrade[4]"
    assert held.notes == ("the twin mailhost-twin is on stg-net; production (mailhost) was not touched",)
    assert held.summary == "mailhost held at upgrade[4]"
    assert held.error == "`labos-update install` exited 1:"
    assert held.tail is not None and held.tail.endswith("DB_PASSWORD=*** failed\ndisk full")
    assert "hunter2" not in held.tail and "\x1b" not in held.tail and "pwned" not in held.tail
    assert held.commands == (
        "upgrader --state-dir /var/lib/upgrader status mailhost",
        "upgrader --state-dir /var/lib/upgrader ssh mailhost --twin",
        "upgrader --state-dir /var/lib/upgrader retry mailhost",
        "upgrader --state-dir /var/lib/upgrader skip mailhost --reason TEXT",
        "upgrader --state-dir /var/lib/upgrader revert mailhost --to 'upgrade[0]'",  # quoted: a glob to the shell
        "upgrader --state-dir /var/lib/upgrader revert mailhost --to 'upgrade[4]'",
        "upgrader --state-dir /var/lib/upgrader abort mailhost",
    )
    validate = held_event(record(), PLAN, "validate.smtp", "check failed", "banner: 554")
    assert validate.tail == "banner: 554" and not any(" revert " in c for c in validate.commands)
    assert validate.commands[0] == "upgrader status mailhost"  # no state dir given: the default one


def test_a_rolled_back_event_carries_the_cause_and_the_warnings() -> None:
    rec = record(error=RunError(phase=Phase.CUTOVER, message="`/etc/init.d/smtpd stop` exited 1:\n" + GUEST_OUTPUT,
                                hint="look at the service"),
                 warnings=["data written to /var/mail/ may exist only on mailhost-twin's disks"])
    rolled = rolled_back_event(rec, state_dir=STATE_DIR)
    assert rolled.summary == "mailhost rolled back after a failure in cutover"
    assert rolled.error == "`/etc/init.d/smtpd stop` exited 1:" and "DB_PASSWORD=***" in (rolled.tail or "")
    assert rolled.hint == "look at the service" and rolled.notes == tuple(rec.warnings)
    assert rolled.commands[-1] == "upgrader --state-dir /var/lib/upgrader start mailhost --plan '/srv/plans/mail host.yml'"
    asked = rolled_back_event(record())  # `upgrader rollback`: no error behind it
    assert asked.summary == "mailhost rolled back" and asked.error is None and asked.tail is None


def test_a_failed_event_names_the_cleanup_that_failed(plan: Plan) -> None:
    rec = record(phase=Phase.FAILED, error=RunError(phase=Phase.VERIFY, message="smtp check failed"),
                 cleanup_error=RunError(phase=Phase.ROLLING_BACK, message="cannot give the service back",
                                        hint="start the old VM"))
    failed = operator_event_for_failure(rec, plan)
    assert failed.kind == OperatorKind.FAILED and failed.phase == Phase.ROLLING_BACK
    assert failed.summary == "mailhost failed in rolling_back: a human must look"
    assert failed.error == "cannot give the service back" and failed.hint == "start the old VM"
    assert failed.commands == ("upgrader status mailhost", "upgrader show mailhost",
                               f"virsh -c {plan.source.libvirt_uri} list --all")


# -- the mail and the JSON ------------------------------------------------------------------------


def test_the_mail_is_plain_text_with_the_facts_and_the_commands() -> None:
    msg = mail(event(), f"{RUN_ID}/operator.held[1]", "upgrader@example.org", ["oncall@example.org"])
    assert msg["Subject"] == "[upgrader] mailhost held at upgrade[4]"
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    assert (msg["X-Upgrader-Audience"], msg["X-Upgrader-Kind"], msg["X-Upgrader-Step"]) == ("operator", "held", "upgrade[4]")
    assert msg["X-Upgrader-Notice-Id"] == f"{RUN_ID}/operator.held[1]" and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    for expected in ("step:   upgrade[4]", "error:\n    `labos-update install` exited 1:", "DB_PASSWORD=***",
                     "next:\n    upgrader --state-dir /var/lib/upgrader status mailhost",
                     "    upgrader --state-dir /var/lib/upgrader revert mailhost --to 'upgrade[4]'"):
        assert expected in body
    assert "hunter2" not in body and "\x1b" not in body


def test_the_payload_has_the_same_fields() -> None:
    data = payload(event(), "id-1")
    assert data["audience"] == "operator" and data["kind"] == "held" and data["notice_id"] == "id-1"
    assert data["summary"] == "mailhost held at upgrade[4]" and data["step"] == "upgrade[4]" and data["phase"] == "upgrade"
    assert data["commands"] == list(event().commands) and data["error"] == event().error and data["tail"] == event().tail
    assert set(data) == {"audience", "notice_id", "kind", "summary", "host", "run_id", "phase", "step", "error", "tail",
                         "hint", "notes", "commands"}


def test_the_webhook_channel_posts_it_signed(receiver: Receiver) -> None:
    channel = WebhookChannel(WebhookNotifier(receiver.url, SECRET))
    assert channel.deliver(event(), "id-1") == "id-1"
    assert channel.describe() == receiver.url.split("?")[0]  # the query (often a token) is not shown
    [request] = receiver.requests
    assert verify_signature(SECRET, request.timestamp, request.body, request.signature, now=time.time())
    assert receiver.bodies == [payload(event(), "id-1")] and receiver.bad_signatures == 0


def test_the_email_channel_mails_the_operators_only(smtp_server: Inbox) -> None:
    channel = EmailChannel(SmtpNotifier(smtp_server.settings()), "upgrader@example.org", ["oncall@example.org"])
    channel.deliver(event(), "id-1")
    [got] = smtp_server.received
    assert got.rcpt_tos == ["oncall@example.org"] and got.mail_from == "upgrader@example.org"
    assert got.message["Subject"] == "[upgrader] mailhost held at upgrade[4]"


# -- the channels a plan's operator block becomes -------------------------------------------------


def test_channels_from_the_plan(tmp_path: Path, fake_world: WorldFile) -> None:
    (tmp_path / "hook.secret").write_text("from-a-file\n")
    by_file = make_plan(tmp_path, fake_world, OPERATOR_BLOCK.format(url="https://hooks.example.org/x?token=t0ken",
                                                                    secret="secret_file: hook.secret"))
    channels = channels_from_plan(by_file, {"UPGRADER_SMTP_HOST": "127.0.0.1"})
    assert channels is not None and channels.problems == []
    assert isinstance(channels.email, EmailChannel) and channels.email.to == ["oncall@example.org"]
    assert isinstance(channels.webhook, WebhookChannel) and channels.webhook.describe() == "https://hooks.example.org/x"
    assert "from-a-file" not in repr(channels) and "t0ken" not in repr(channels)
    channels.check()

    by_env = make_plan(tmp_path, fake_world, OPERATOR_BLOCK.format(url="https://hooks.example.org/x",
                                                                   secret="secret_env: UPGRADER_HOOK_SECRET"))
    with_secret = channels_from_plan(by_env, {"UPGRADER_HOOK_SECRET": "s3cret"})
    assert with_secret is not None and with_secret.problems == []
    unset = channels_from_plan(by_env, {"UPGRADER_SMTP_PORT": "smtp"})
    assert unset is not None and isinstance(unset.webhook, BrokenChannel) and isinstance(unset.email, BrokenChannel)
    with pytest.raises(Exception, match="UPGRADER_HOOK_SECRET .* is not set") as refused:
        unset.check()
    assert "UPGRADER_SMTP_PORT must be a port number" in str(refused.value)
    with pytest.raises(DeliveryRefused, match="not set up"):  # later, a delivery fails without retries
        unset.webhook.deliver(event(), "id-1")
    assert channels_from_plan(make_plan(tmp_path, fake_world)) is None
