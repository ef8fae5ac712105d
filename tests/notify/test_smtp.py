"""SmtpNotifier against a real SMTP server (aiosmtpd on 127.0.0.1), and SmtpSettings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest
from notify_helpers import END, LOOPBACK, NOW, PASSWORD, START, USER, Inbox, free_port

from upgrader.errors import InfraError, InputError
from upgrader.notify import DeliveryRefused, Kind, Notice, SmtpNotifier, SmtpSettings, render, send_with_retry, uid_for
from upgrader.plan import Announce

MakeNotice = Callable[..., Notice]
# The auth server allows AUTH without TLS (loopback only); aiosmtpd warns about that, rightly.
plain_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def event_of(msg: EmailMessage) -> tuple[icalendar.Calendar, icalendar.Event]:
    (att,) = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert att.get_filename() == "invite.ics"
    cal = icalendar.Calendar.from_ical(att.get_content())
    (event,) = cal.walk("VEVENT")
    return cal, event


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_is_delivered(kind: Kind, smtp_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    msg = render(make_notice(kind, sequence=1, reason="upgrade failed verification"), announce, None, now=NOW)
    delivery_id = SmtpNotifier(smtp_server.settings()).send(msg)

    (got,) = smtp_server.received
    assert delivery_id == msg["Message-ID"] == got.message["Message-ID"]
    assert got.mail_from == "ops@example.org"
    assert got.rcpt_tos == ["alice@example.org", "bob@example.net"]
    received = got.message
    assert received["Subject"] == msg["Subject"]
    assert received.get_body(("plain",)) is not None and received.get_body(("html",)) is not None
    alternative = [p for p in received.walk() if p.get_content_type() == "multipart/alternative"]
    assert len(alternative) == 1
    assert [p.get_content_type() for p in alternative[0].iter_parts()] == ["text/plain", "text/html"]
    if kind in (Kind.ANNOUNCE, Kind.REMINDER, Kind.POSTPONED):
        cal, event = event_of(received)
        assert cal["METHOD"] == "PUBLISH"
        assert str(event["UID"]) == uid_for("20240520-ab12", "mailhost")
        assert event["SEQUENCE"] == 1
        assert event.decoded("DTSTART") == START and event.decoded("DTEND") == END
        assert event.decoded("DTSTART").utcoffset() == timedelta(0)
    else:
        assert not any(p.get_content_type() == "text/calendar" for p in received.walk())


def test_postponement_moves_the_same_event(smtp_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    notifier = SmtpNotifier(smtp_server.settings())
    notifier.send(render(make_notice(Kind.ANNOUNCE, sequence=0), announce, None, now=NOW))
    later = timedelta(days=7)
    notifier.send(
        render(
            make_notice(Kind.POSTPONED, sequence=1, window_start=START + later, window_end=END + later, reason="staging check failed"),
            announce,
            None,
            now=NOW,
        )
    )
    (_, first), (_, second) = (event_of(r.message) for r in smtp_server.received)
    assert first["UID"] == second["UID"]
    assert second["SEQUENCE"] > first["SEQUENCE"]
    assert second.decoded("DTSTART") == START + later and second.decoded("DTEND") == END + later
    assert "staging check failed" in smtp_server.received[1].message.get_body(("plain",)).get_content()


def test_injection_sends_nothing(tmp_path: Path, smtp_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    notifier = SmtpNotifier(smtp_server.settings())
    (tmp_path / "announce.subject.j2").write_text("Hi {{ host }}\nBcc: victim@example.com\n")
    bad_sender = Announce.model_construct(sender="ops@example.org\nBcc: victim@example.com", to=["alice@example.org"], subject=None)
    bad_rcpt = Announce.model_construct(sender="ops@example.org", to=["alice@example.org\r\nBcc: victim@example.com"], subject=None)
    attempts = [
        lambda: render(make_notice(), announce, tmp_path, now=NOW),
        lambda: render(make_notice(), bad_sender, None, now=NOW),
        lambda: render(make_notice(), bad_rcpt, None, now=NOW),
        lambda: render(make_notice(host="mailhost\nBcc: victim@example.com"), announce, None, now=NOW),
    ]
    for attempt in attempts:
        with pytest.raises(InputError, match="header injection"):
            notifier.send(attempt())
    assert smtp_server.received == []


@plain_auth
def test_login(smtp_auth_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    msg = render(make_notice(), announce, None, now=NOW)
    SmtpNotifier(smtp_auth_server.settings(user=USER, password=PASSWORD, allow_plaintext_auth=True)).send(msg)
    assert len(smtp_auth_server.received) == 1


@plain_auth
def test_password_from_file(tmp_path: Path, smtp_auth_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    SmtpNotifier(smtp_auth_server.settings(user=USER, password_file=secret, allow_plaintext_auth=True)).send(render(make_notice(), announce, None, now=NOW))
    assert len(smtp_auth_server.received) == 1


@plain_auth
def test_wrong_password_is_refused_not_retried(smtp_auth_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    notifier = SmtpNotifier(smtp_auth_server.settings(user=USER, password="wrong", allow_plaintext_auth=True))
    with pytest.raises(DeliveryRefused, match="refused the login") as err:
        send_with_retry(notifier, render(make_notice(), announce, None, now=NOW), attempts=3, max_wait=0.01)
    assert "wrong" not in str(err.value) and err.value.exit_code == 5
    assert smtp_auth_server.received == []


@plain_auth
def test_auth_without_tls_is_refused_not_retried(smtp_auth_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    class Counting(SmtpNotifier):
        calls = 0

        def send(self, message: EmailMessage) -> str:
            self.calls += 1
            return super().send(message)

    notifier = Counting(smtp_auth_server.settings(user=USER, password=PASSWORD))
    with pytest.raises(DeliveryRefused, match="without TLS") as err:
        send_with_retry(notifier, render(make_notice(), announce, None, now=NOW), attempts=3, max_wait=0.01)
    assert notifier.calls == 1 and smtp_auth_server.received == []
    assert err.value.exit_code == 5 and "UPGRADER_SMTP_ALLOW_PLAINTEXT_AUTH=1" in (err.value.hint or "")
    assert PASSWORD not in str(err.value)


def test_auth_needs_starttls_even_when_the_server_offers_auth_in_clear(smtp_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    # STARTTLS asked for but not offered: refused before any AUTH, never downgraded to clear text
    with pytest.raises(DeliveryRefused, match="STARTTLS|starttls"):
        SmtpNotifier(smtp_server.settings(user=USER, password=PASSWORD, starttls=True)).send(render(make_notice(), announce, None, now=NOW))
    assert smtp_server.received == []


def test_starttls_not_offered_is_refused(smtp_server: Inbox, announce: Announce, make_notice: MakeNotice) -> None:
    # aiosmtpd without a TLS context does not offer STARTTLS: we must not fall back to plain text
    with pytest.raises(DeliveryRefused, match="STARTTLS|starttls"):
        SmtpNotifier(smtp_server.settings(starttls=True)).send(render(make_notice(), announce, None, now=NOW))
    assert smtp_server.received == []


def test_unreachable_server_is_infra_error(announce: Announce, make_notice: MakeNotice) -> None:
    closed = SmtpSettings(host=LOOPBACK, port=free_port(), timeout=2, local_hostname="client.test")
    msg = render(make_notice(), announce, None, now=NOW)
    with pytest.raises(InfraError, match=f"cannot reach SMTP server {LOOPBACK}") as err:
        SmtpNotifier(closed).send(msg)
    assert not isinstance(err.value, DeliveryRefused) and err.value.hint
    with pytest.raises(InfraError, match="after 2 attempts"):
        send_with_retry(SmtpNotifier(closed), msg, attempts=2, max_wait=0.01)


def test_message_without_message_id_is_refused(smtp_server: Inbox) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "x"
    with pytest.raises(InputError, match="Message-ID"):
        SmtpNotifier(smtp_server.settings()).send(msg)


# --- settings ---------------------------------------------------------------------------------


def test_settings_defaults_from_empty_env() -> None:
    assert SmtpSettings.from_env({}) == SmtpSettings()


def test_settings_from_env() -> None:
    env = {
        "UPGRADER_SMTP_HOST": "smtp.example.org",
        "UPGRADER_SMTP_PORT": "587",
        "UPGRADER_SMTP_STARTTLS": "yes",
        "UPGRADER_SMTP_USER": "ops",
        "UPGRADER_SMTP_PASSWORD": "hunter2",
        "UPGRADER_SMTP_TIMEOUT": "7.5",
        "OTHER": "x",
    }
    s = SmtpSettings.from_env(env)
    assert (s.host, s.port, s.starttls, s.user, s.password, s.timeout) == ("smtp.example.org", 587, True, "ops", "hunter2", 7.5)
    for true in ("1", "true", "TRUE", "yes"):
        assert SmtpSettings.from_env({"UPGRADER_SMTP_STARTTLS": true}).starttls
    for false in ("0", "false", "no", ""):
        assert not SmtpSettings.from_env({"UPGRADER_SMTP_STARTTLS": false}).starttls
    assert not s.allow_plaintext_auth
    assert SmtpSettings.from_env({"UPGRADER_SMTP_ALLOW_PLAINTEXT_AUTH": "1"}).allow_plaintext_auth
    assert not SmtpSettings.from_env({"UPGRADER_SMTP_ALLOW_PLAINTEXT_AUTH": "no"}).allow_plaintext_auth


def test_settings_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    s = SmtpSettings.from_env({"UPGRADER_SMTP_USER": "ops", "UPGRADER_SMTP_PASSWORD_FILE": str(tmp_path / "pw")})
    assert s.password == "from-file"
    with pytest.raises(InputError, match="cannot read the SMTP password file"):
        SmtpSettings.from_env({"UPGRADER_SMTP_USER": "ops", "UPGRADER_SMTP_PASSWORD_FILE": str(tmp_path / "none")})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"UPGRADER_SMTP_PORT": "smtp"}, "PORT"),
        ({"UPGRADER_SMTP_PORT": "70000"}, "PORT"),
        ({"UPGRADER_SMTP_STARTTLS": "maybe"}, "STARTTLS"),
        ({"UPGRADER_SMTP_ALLOW_PLAINTEXT_AUTH": "please"}, "ALLOW_PLAINTEXT_AUTH"),
        ({"UPGRADER_SMTP_TIMEOUT": "soon"}, "TIMEOUT"),
        ({"UPGRADER_SMTP_USER": "ops"}, "no password"),
        ({"UPGRADER_SMTP_PASSWORD": "pw"}, "USER is not"),
        ({"UPGRADER_SMTP_USER": "ops", "UPGRADER_SMTP_PASSWORD": "pw", "UPGRADER_SMTP_PASSWORD_FILE": "/x"}, "both"),
    ],
)
def test_settings_bad_env(env: dict[str, str], match: str) -> None:
    with pytest.raises(InputError, match=match):
        SmtpSettings.from_env(env)


def test_repr_masks_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("file-secret\n")
    for s in (
        SmtpSettings(user="ops", password="hunter2"),
        SmtpSettings.from_env({"UPGRADER_SMTP_USER": "ops", "UPGRADER_SMTP_PASSWORD": "hunter2"}),
        SmtpSettings.from_env({"UPGRADER_SMTP_USER": "ops", "UPGRADER_SMTP_PASSWORD_FILE": str(tmp_path / "pw")}),
    ):
        for text in (repr(s), str(s), f"{s}", repr(SmtpNotifier(s))):
            assert "hunter2" not in text and "file-secret" not in text
            assert "password='***'" in text
    assert "password=None" in repr(SmtpSettings())
