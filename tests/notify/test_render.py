"""render(): structure, templates, calendar content and header-injection refusals (no network)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest
from notify_helpers import END, NOW, START

from upgrader.errors import InputError
from upgrader.notify import Kind, Notice, render, uid_for
from upgrader.plan import Announce

MakeNotice = Callable[..., Notice]


def parts(msg: EmailMessage) -> dict[str, EmailMessage]:
    return {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}  # type: ignore[misc]


def invite(msg: EmailMessage) -> icalendar.Calendar:
    return icalendar.Calendar.from_ical(parts(msg)["text/calendar"].get_content())


def roundtrip(msg: EmailMessage) -> EmailMessage:
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_uid_is_stable_per_run_and_host() -> None:
    assert uid_for("r1", "mailhost") == "r1.mailhost@upgrader" == uid_for("r1", "mailhost")
    assert uid_for("r1", "mailhost") != uid_for("r2", "mailhost")


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_renders_text_and_html(kind: Kind, announce: Announce, make_notice: MakeNotice) -> None:
    msg = roundtrip(render(make_notice(kind, reason="disk check failed"), announce, None, now=NOW))
    assert msg["From"] == "ops@example.org"
    assert msg["To"] == "alice@example.org, bob@example.net"
    assert msg["Subject"] and "mailhost" in msg["Subject"]
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"].endswith("@example.org>")
    assert msg["X-Upgrader-Kind"] == kind.value
    found = parts(msg)
    assert "mailhost" in found["text/plain"].get_content()
    assert "<strong>mailhost</strong>" in found["text/html"].get_content()
    assert (msg.get_body(("plain",)) is not None) and (msg.get_body(("html",)) is not None)
    assert ("text/calendar" in found) == (kind in (Kind.ANNOUNCE, Kind.REMINDER, Kind.POSTPONED))


@pytest.mark.parametrize("kind", [Kind.ANNOUNCE, Kind.REMINDER, Kind.POSTPONED])
def test_invite_is_a_publish_event_for_the_window(kind: Kind, announce: Announce, make_notice: MakeNotice) -> None:
    msg = roundtrip(render(make_notice(kind, sequence=2), announce, None, now=NOW))
    att = parts(msg)["text/calendar"]
    assert att.get_filename() == "invite.ics"
    assert att.get_param("method") == "PUBLISH"
    cal = invite(msg)
    assert cal["METHOD"] == "PUBLISH"
    (event,) = cal.walk("VEVENT")
    assert str(event["UID"]) == uid_for("20240520-ab12", "mailhost")
    assert event["SEQUENCE"] == 2
    assert event.decoded("DTSTART") == START and event.decoded("DTSTART").utcoffset() == timedelta(0)
    assert event.decoded("DTEND") == END
    assert event.decoded("DTSTAMP") == NOW
    assert str(event["SUMMARY"]) == "Maintenance of mailhost: short downtime"
    assert str(event["STATUS"]) == "CONFIRMED"
    assert "about 2 minutes" in str(event["DESCRIPTION"])
    assert b"DTSTART:20240601T010000Z" in att.get_content().encode()


def test_window_shown_in_its_time_zone(announce: Announce, make_notice: MakeNotice) -> None:
    msg = render(make_notice(), announce, None, now=NOW)
    assert msg["Subject"] == "Planned maintenance of mailhost: Sat 01 Jun 2024, 03:00 CEST"
    text = parts(msg)["text/plain"].get_content()
    assert "from  Sat 01 Jun 2024, 03:00 CEST" in text and "until 05:00 CEST" in text


def test_html_is_escaped_text_is_not(announce: Announce, make_notice: MakeNotice) -> None:
    msg = render(make_notice(Kind.ROLLED_BACK, reason="<script>x</script> & co"), announce, None, now=NOW)
    found = parts(msg)
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in found["text/html"].get_content()
    assert "<script>" not in found["text/html"].get_content()
    assert "<script>x</script> & co" in found["text/plain"].get_content()


def test_template_dir_overrides_per_file(tmp_path: Path, announce: Announce, make_notice: MakeNotice) -> None:
    (tmp_path / "announce.txt.j2").write_text("Custom for {{ host }} ({{ extra.contact }}), window {{ start.strftime('%H:%M') }}\n")
    msg = render(make_notice(extra={"contact": "hotline 123"}), announce, tmp_path, now=NOW)
    found = parts(msg)
    assert found["text/plain"].get_content() == "Custom for mailhost (hotline 123), window 03:00\n"
    assert "<strong>mailhost</strong>" in found["text/html"].get_content()  # default still used
    assert msg["Subject"].startswith("Planned maintenance of mailhost")


def test_undefined_variable_names_the_template(tmp_path: Path, announce: Announce, make_notice: MakeNotice) -> None:
    (tmp_path / "reminder.html.j2").write_text("<p>{{ hots }}</p>\n")
    with pytest.raises(InputError) as err:
        render(make_notice(Kind.REMINDER), announce, tmp_path, now=NOW)
    assert str(tmp_path / "reminder.html.j2") in err.value.message
    assert "'hots' is undefined" in err.value.message
    assert err.value.hint and err.value.exit_code == 2


def test_template_syntax_error_names_file_and_line(tmp_path: Path, announce: Announce, make_notice: MakeNotice) -> None:
    (tmp_path / "done.txt.j2").write_text("ok\n{% if host %}\nno endif\n")
    with pytest.raises(InputError, match=r"done\.txt\.j2:\d+: Unexpected end of template"):
        render(make_notice(Kind.DONE), announce, tmp_path, now=NOW)


def test_template_dir_must_exist(tmp_path: Path, announce: Announce, make_notice: MakeNotice) -> None:
    with pytest.raises(InputError, match="not a directory"):
        render(make_notice(), announce, tmp_path / "missing", now=NOW)


def test_plan_subject_is_a_template_too(make_notice: MakeNotice) -> None:
    announce = Announce(sender="ops@example.org", to=["alice@example.org"], subject="[{{ kind }}] {{ host }} maintenance")
    assert render(make_notice(Kind.DONE), announce, None, now=NOW)["Subject"] == "[done] mailhost maintenance"


def test_non_ascii_subject_is_encoded(tmp_path: Path, announce: Announce, make_notice: MakeNotice) -> None:
    (tmp_path / "announce.subject.j2").write_text("Wartung von {{ host }} – Größe\n")
    msg = roundtrip(render(make_notice(), announce, tmp_path, now=NOW))
    assert msg["Subject"] == "Wartung von mailhost – Größe"


# --- header injection ---------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["Hello\nBcc: victim@example.com", "Hello\r\nX: y", "a\rb", "tab\there", "nul\x00", "ls\u2028x"])
def test_subject_template_with_line_break_is_refused(tmp_path: Path, subject: str, announce: Announce, make_notice: MakeNotice) -> None:
    (tmp_path / "announce.subject.j2").write_text("{{ extra.s }}\n")
    with pytest.raises(InputError, match="header injection") as err:
        render(make_notice(extra={"s": subject}), announce, tmp_path, now=NOW)
    assert "announce.subject.j2" in err.value.message


def test_host_with_line_break_is_refused(announce: Announce, make_notice: MakeNotice) -> None:
    with pytest.raises(InputError, match="header injection.*host"):
        render(make_notice(host="mailhost\r\nBcc: victim@example.com"), announce, None, now=NOW)


def test_sender_with_line_break_is_refused(make_notice: MakeNotice) -> None:
    # model_construct skips the plan's own validation: render must not rely on it
    bad = Announce.model_construct(sender="ops@example.org\r\nBcc: victim@example.com", to=["alice@example.org"], subject=None)
    with pytest.raises(InputError, match="header injection.*announce.sender"):
        render(make_notice(), bad, None, now=NOW)


@pytest.mark.parametrize("rcpt", ["bob@example.net\nBcc: victim@example.com", "bob@example.net, victim@example.com", "Bob <bob@example.net>"])
def test_bad_recipient_is_refused(rcpt: str, make_notice: MakeNotice) -> None:
    bad = Announce.model_construct(sender="ops@example.org", to=["alice@example.org", rcpt], subject=None)
    with pytest.raises(InputError, match=r"announce\.to\[1\]"):
        render(make_notice(), bad, None, now=NOW)


def test_plan_subject_with_line_break_after_rendering_is_refused(make_notice: MakeNotice) -> None:
    announce = Announce(sender="ops@example.org", to=["alice@example.org"], subject="{{ extra.s }}")
    with pytest.raises(InputError, match="header injection"):
        render(make_notice(extra={"s": "x\nBcc: victim@example.com"}), announce, None, now=NOW)


# --- bad notices ----------------------------------------------------------------------------


def test_naive_window_is_refused(announce: Announce, make_notice: MakeNotice) -> None:
    with pytest.raises(InputError, match="no time zone"):
        render(make_notice(window_start=datetime(2024, 6, 1, 1, 0)), announce, None, now=NOW)


def test_empty_window_is_refused(announce: Announce, make_notice: MakeNotice) -> None:
    with pytest.raises(InputError, match="ends"):
        render(make_notice(window_end=START), announce, None, now=NOW)


def test_unknown_time_zone_is_refused(announce: Announce, make_notice: MakeNotice) -> None:
    with pytest.raises(InputError, match="Mars/Olympus"):
        render(make_notice(timezone="Mars/Olympus"), announce, None, now=NOW)


def test_default_now_is_current_time(announce: Announce, make_notice: MakeNotice) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    msg = roundtrip(render(make_notice(), announce, None))
    assert msg["Date"].datetime >= before
