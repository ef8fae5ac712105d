"""The IMAP read-back's parsing of real server answers (shapes as imaplib returns them from Dovecot).
The read itself runs against the Debian guest's Dovecot in tests/e2e/test_debian_lab.py."""

from __future__ import annotations

from upgrader.lab.imapcheck import MailboxView, _status_items, compare, message_ids


def test_status_answer_gives_uidvalidity_and_uidnext() -> None:
    raw = b'"INBOX" (UIDVALIDITY 1764641234 UIDNEXT 101 MESSAGES 100)'
    assert _status_items(raw) == {"UIDVALIDITY": 1764641234, "UIDNEXT": 101, "MESSAGES": 100}


def test_status_answer_without_items_is_empty() -> None:
    assert _status_items(b'"INBOX" ()') == {}


def test_message_ids_from_a_fetch_answer_in_order_skipping_the_closing_parens() -> None:
    fetched = [
        (b"1 (BODY[HEADER.FIELDS (MESSAGE-ID)] {52}", b"Message-ID: <a1@client.lab>\r\n\r\n"),
        b")",
        (b"2 (BODY[HEADER.FIELDS (MESSAGE-ID)] {52}", b"Message-Id:\r\n <b2@client.lab>\r\n\r\n"),
        b")",
        (b"3 (BODY[HEADER.FIELDS (MESSAGE-ID)] {2}", b"\r\n"),  # a message without one
        b")",
    ]
    assert message_ids(fetched) == ["<a1@client.lab>", "<b2@client.lab>"]  # a folded header too


def test_compare_names_lost_mails_and_a_changed_uidvalidity() -> None:
    view = MailboxView(ok=True, folder="INBOX", uidvalidity=1700000001, messages=2,
                       message_ids=["<a@c>", "<b@c>"])
    assert compare(view, {"uidvalidity": 1700000001}, ["<a@c>", "<b@c>"]) == []
    problems = compare(view, {"uidvalidity": 1700000000}, ["<a@c>", "<x@c>"])
    assert problems == ["1 of 2 accepted mails are not in INBOX: <x@c>",
                        "UIDVALIDITY of INBOX changed: 1700000000 -> 1700000001 (clients download the whole folder again)"]
