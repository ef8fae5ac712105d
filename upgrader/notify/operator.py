"""Operator notices: what the people running upgrader are told when a run is held, waits for
approval, is rolled back or fails - the host, the step, the error's last lines and the exact
commands to run next. Customers never get these (steps/notices.py keeps the two apart).

    event = OperatorEvent(OperatorKind.HELD, host="mailhost", run_id=..., phase=Phase.UPGRADE, step="upgrade[4]", ...)
    channels = channels_from_plan(plan)          # the plan's `operator:` block -> email / webhook channels
    channels.email.deliver(event, notice_id)     # a plain-text mail through the SMTP settings (UPGRADER_SMTP_*)
    channels.webhook.deliver(event, notice_id)   # the same fields as signed JSON (WebhookNotifier.post)

Retrying, journaling and "never block the run" are the caller's (steps/operator_notice.py)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from upgrader.errors import InputError
from upgrader.notify.delivery import DeliveryRefused, Notifier
from upgrader.notify.headers import address, single_line
from upgrader.notify.message import HEADER_PREFIX
from upgrader.phases import Phase

if TYPE_CHECKING:
    from upgrader.notify.webhook import WebhookNotifier
    from upgrader.plan import Plan

AUDIENCE = "operator"
ATTEMPTS = 4  # per channel and notice: waits of 1 s, 2 s, 4 s in between
MAX_WAIT = 10.0


class OperatorKind(str, Enum):
    HELD = "held"
    APPROVAL = "approval"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    URGENT = "urgent"  # a run was interrupted inside the cutover (prod may be down); run-due resumes it


@dataclass(frozen=True)
class OperatorEvent:
    """One operator notice. Text that may come from a guest (error, tail, hint) is cleaned by
    its builder (steps/operator_notice.py, through operator_tail) before it gets here."""

    kind: OperatorKind
    host: str
    run_id: str
    phase: Phase  # where the run is (held, approval) or the phase that failed (rolled_back, failed)
    step: str | None = None  # the journal key of the step, e.g. "upgrade[4]"
    error: str | None = None  # the error's first line
    tail: str | None = None  # its last lines (operator_tail: escapes stripped, NAME=secret masked)
    hint: str | None = None  # the error's hint
    notes: tuple[str, ...] = ()  # what else the operator must know (e.g. data left on the twin)
    commands: tuple[str, ...] = ()  # exact commands to run next, shell-quoted

    @property
    def summary(self) -> str:
        """One line: "mailhost held at upgrade[4]", "mailhost waits for approval", ..."""
        where = f" at {self.step}" if self.step else f" in {self.phase.value}"
        cause = f" after a failure in {self.phase.value}" if self.error else ""
        return {
            OperatorKind.HELD: f"{self.host} held{where}",
            OperatorKind.APPROVAL: f"{self.host} waits for approval",
            OperatorKind.ROLLED_BACK: f"{self.host} rolled back{cause}",
            OperatorKind.FAILED: f"{self.host} failed{where}: a human must look",
            OperatorKind.URGENT: f"URGENT: {self.host} was interrupted in {self.phase.value}",
        }[self.kind]


# --------------------------------------------------------------------------------------------
# What is sent: the mail and the JSON
# --------------------------------------------------------------------------------------------

_WHAT_HAPPENED = {
    OperatorKind.HELD: "A step failed before the cutover. Production was not touched; the twin keeps running on "
                       "the staging segment as it was when the step failed, waiting for you.",
    OperatorKind.APPROVAL: "The run is ready for its cutover and waits for an approval (the plan says "
                           "approval: required). Nothing happens to production until someone approves; then the "
                           "run cuts over in its window (`upgrader run-due`).",
    OperatorKind.ROLLED_BACK: "The run was rolled back: the service is on the old VM again.",
    OperatorKind.FAILED: "The run ended in `failed`: its cleanup (abort or rollback) failed again and again, and "
                         "upgrader stopped trying. Look at the VMs before anything else is done with them.",
    OperatorKind.URGENT: "The process running the cutover died (killed, or its machine rebooted) in the middle of "
                         "it: production may be down right now. `upgrader run-due` found it and is resuming the run "
                         "from its last checkpoint (a resume is crash-safe: it finishes the cutover or rolls back). "
                         "Check the outcome with the first command below.",
}


def payload(event: OperatorEvent, notice_id: str) -> dict[str, object]:
    """The webhook's JSON object (see docs/scheduling.md, "Operator notices")."""
    return {
        "audience": AUDIENCE,
        "notice_id": notice_id,
        "kind": event.kind.value,
        "summary": event.summary,
        "host": event.host,
        "run_id": event.run_id,
        "phase": event.phase.value,
        "step": event.step,
        "error": event.error,
        "tail": event.tail,
        "hint": event.hint,
        "notes": list(event.notes),
        "commands": list(event.commands),
    }


def _indented(text: str) -> list[str]:
    return ["    " + row for row in text.split("\n")]


def text(event: OperatorEvent) -> str:
    """The mail's plain-text body."""
    rows = [f"{event.summary}.", "", *textwrap.wrap(_WHAT_HAPPENED[event.kind], 76), "",
            f"host:   {event.host}", f"run:    {event.run_id}", f"phase:  {event.phase.value}"]
    if event.step:
        rows.append(f"step:   {event.step}")
    if event.error:
        rows += ["", "error:", *_indented(event.error)]
    if event.tail:
        rows += ["", "last lines:", *_indented(event.tail)]
    if event.hint:
        rows += ["", "hint:", *_indented(event.hint)]
    for note in event.notes:
        rows += ["", "note:", *_indented(note)]
    if event.commands:
        rows += ["", "next:", *("    " + command for command in event.commands)]
    rows += ["", "-- ", "upgrader, to its operators (customers are not sent this)."]
    return "\n".join(rows) + "\n"


def mail(event: OperatorEvent, notice_id: str, sender: str, to: list[str], *, now: datetime | None = None) -> EmailMessage:
    """The plain-text mail for `event`. InputError for a value that would inject a header."""
    origin = address("operator.sender", sender)
    recipients = [address(f"operator.email[{i}]", rcpt) for i, rcpt in enumerate(to)]
    if not recipients:
        raise InputError("operator.email has no recipients")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = origin
    msg["To"] = recipients
    msg["Subject"] = single_line("the operator notice's subject", f"[upgrader] {event.summary}")
    msg["Date"] = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    msg["Message-ID"] = make_msgid(idstring=f"operator.{event.kind.value}", domain=origin.domain)
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (("Audience", AUDIENCE), ("Kind", event.kind.value), ("Host", event.host),
                        ("Run-Id", event.run_id), ("Phase", event.phase.value), ("Step", event.step),
                        ("Notice-Id", notice_id)):
        if value:
            msg[HEADER_PREFIX + name] = single_line(f"the X-Upgrader-{name} header", value)
    msg.set_content(text(event))
    return msg


# --------------------------------------------------------------------------------------------
# The channels (the port) and how the plan's operator block becomes them
# --------------------------------------------------------------------------------------------


class OperatorChannel(Protocol):
    """One way to reach the operators. `deliver` returns a delivery id; it raises InfraError when
    worth retrying, DeliveryRefused (or InputError) when not."""

    def deliver(self, event: OperatorEvent, notice_id: str) -> str: ...

    def describe(self) -> str:
        """Where it goes, for messages and the journal; never a secret."""
        ...


@dataclass
class EmailChannel:
    notifier: Notifier
    sender: str
    to: list[str]

    def deliver(self, event: OperatorEvent, notice_id: str) -> str:
        return self.notifier.send(mail(event, notice_id, self.sender, self.to))

    def describe(self) -> str:
        return ", ".join(self.to)


@dataclass
class WebhookChannel:
    notifier: "WebhookNotifier"

    def deliver(self, event: OperatorEvent, notice_id: str) -> str:
        self.notifier.post(payload(event, notice_id))
        return notice_id

    def describe(self) -> str:
        return self.notifier.shown_url


@dataclass
class BrokenChannel:
    """A channel that could not be set up (a missing secret, bad SMTP settings). `upgrader start`
    refuses it; later (a resume from cron with another environment) each delivery fails without
    a retry, is journaled and said, and the run goes on."""

    name: str
    problem: str

    def deliver(self, event: OperatorEvent, notice_id: str) -> str:
        raise DeliveryRefused(f"the operator {self.name} channel is not set up: {self.problem}")

    def describe(self) -> str:
        return f"{self.name} (not set up: {self.problem})"


@dataclass
class OperatorChannels:
    """What Ports.operator holds: the plan's channels and how hard to retry each delivery."""

    email: OperatorChannel | None = None
    webhook: OperatorChannel | None = None
    attempts: int = ATTEMPTS
    max_wait: float = MAX_WAIT
    problems: list[str] = field(default_factory=list)  # why a channel is a BrokenChannel

    def named(self) -> list[tuple[str, OperatorChannel]]:
        return [(name, channel) for name, channel in (("email", self.email), ("webhook", self.webhook)) if channel is not None]

    def check(self) -> None:
        """InputError if a channel could not be set up (called by `upgrader start`)."""
        if self.problems:
            raise InputError(
                "operator notices cannot be sent: " + "; ".join(self.problems),
                hint="fix the environment (or the plan's operator block) and start again; nothing was done",
            )


def _secret(plan: "Plan", environ: Mapping[str, str]) -> str:
    """The webhook's signing secret from the variable or file the plan names; InputError if unset,
    unreadable or empty."""
    hook = plan.operator.webhook if plan.operator else None
    assert hook is not None
    if hook.secret_env is not None:
        value = environ.get(hook.secret_env, "")
        if not value:
            raise InputError(f"the environment variable {hook.secret_env} (operator.webhook.secret_env) is not set")
        return value
    assert hook.secret_file is not None
    path = plan.resolve_path(hook.secret_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read operator.webhook.secret_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not lines or not lines[0]:
        raise InputError(f"operator.webhook.secret_file {path} is empty")
    return lines[0]


def channels_from_plan(plan: "Plan", environ: Mapping[str, str] = os.environ) -> OperatorChannels | None:
    """The plan's operator block as channels: mail through SmtpNotifier with the UPGRADER_SMTP_*
    settings and From: operator.sender (else announce.sender); the webhook through WebhookNotifier
    with the secret from secret_env / secret_file. A channel that cannot be set up becomes a
    BrokenChannel (and a problem `check` reports). None without an operator block."""
    from upgrader.notify.smtp import SmtpNotifier, SmtpSettings
    from upgrader.notify.webhook import WebhookNotifier

    op = plan.operator
    if op is None:
        return None
    channels = OperatorChannels()
    if op.email:
        sender = op.sender or (plan.announce.sender if plan.announce else None)
        assert sender is not None  # the plan check requires one
        try:
            channels.email = EmailChannel(SmtpNotifier(SmtpSettings.from_env(environ)), sender, list(op.email))
        except InputError as exc:
            channels.problems.append(f"email: {exc.message}")
            channels.email = BrokenChannel("email", exc.message)
    if op.webhook is not None:
        try:
            channels.webhook = WebhookChannel(WebhookNotifier(op.webhook.url, _secret(plan, environ)))
        except InputError as exc:
            channels.problems.append(f"webhook: {exc.message}")
            channels.webhook = BrokenChannel("webhook", exc.message)
    return channels


__all__ = [
    "AUDIENCE",
    "BrokenChannel",
    "EmailChannel",
    "OperatorChannel",
    "OperatorChannels",
    "OperatorEvent",
    "OperatorKind",
    "WebhookChannel",
    "channels_from_plan",
    "mail",
    "payload",
    "text",
]
