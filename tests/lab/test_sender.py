"""The cutover bench's realistic sender (upgrader.lab.sender) against a real SMTP server on
loopback (aiosmtpd): its accounting of accepted / refused / failed deliveries and of the delay of
one delivery (completion - first attempt). No lab needed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from upgrader.lab.sender import Sender
from upgrader.lab.traffic import Traffic

LOOPBACK = "127.0.0.1"


class Server:
    """aiosmtpd handler: refuses the RCPT of delivery number `refuse_nth` with a 451, holds the
    DATA of delivery number `slow_nth` for `slow_seconds`, keeps the Message-IDs it accepted."""

    def __init__(self, refuse_nth: int | None = None, slow_nth: int | None = None, slow_seconds: float = 0.0) -> None:
        self.refuse_nth, self.slow_nth, self.slow_seconds = refuse_nth, slow_nth, slow_seconds
        self.rcpts = self.datas = 0
        self.ids: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        self.rcpts += 1
        if self.rcpts == self.refuse_nth:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.datas += 1
        if self.datas == self.slow_nth:
            await asyncio.sleep(self.slow_seconds)
        for line in envelope.content.decode(errors="replace").splitlines():
            if line.lower().startswith("message-id:"):
                self.ids.append(line.split(":", 1)[1].strip())
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Server, int]]:
    handler = Server(refuse_nth=2, slow_nth=3, slow_seconds=0.6)
    port = _free_port()
    controller = Controller(handler, hostname=LOOPBACK, port=port, server_hostname="mx.test")
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_deliveries_on_their_own_connections_counted_with_the_longest_delay(smtp: tuple[Server, int]) -> None:
    handler, port = smtp
    sender = Sender(LOOPBACK, port, "alice@mx.test", interval=0.2, connect_timeout=5)
    stop = threading.Event()
    runner = threading.Thread(target=sender.run, args=(stop,))
    runner.start()
    time.sleep(1.1)
    stop.set()
    runner.join(10)
    s = sender.summary()
    n = s["sender_deliveries"]
    assert n >= 5, s  # the 0.6 s delivery did not hold the next ones back: they ran beside it
    assert (s["sender_accepted"], s["sender_refused"], s["sender_failed"], s["sender_unfinished"]) == (n - 1, 1, 0, 0), s
    assert sorted(s["sender_accepted_ids"]) == sorted(handler.ids)
    assert any("451" in e for e in s["sender_errors"]), s["sender_errors"]
    assert 0.6 <= s["longest_delivery_delay"] < 1.5, s


def _late_door(target_port: int, delay: float) -> tuple[int, threading.Thread, socket.socket]:
    """A port that takes its connection only after `delay` s and then relays it to the server: the
    client waits that long for its SMTP greeting."""
    door = socket.create_server((LOOPBACK, 0))

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            b.close()

    def serve() -> None:
        time.sleep(delay)
        door.settimeout(5)
        try:
            client, _ = door.accept()
        except OSError:
            return
        upstream = socket.create_connection((LOOPBACK, target_port))
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return door.getsockname()[1], thread, door


def test_a_delivery_answered_late_is_accepted_with_its_delay() -> None:
    handler = Server()
    port = _free_port()
    controller = Controller(handler, hostname=LOOPBACK, port=port, server_hostname="mx.test")
    controller.start()
    door_port, thread, door = _late_door(port, 0.7)
    try:
        started = time.monotonic()
        delivery = Sender(LOOPBACK, door_port, "alice@mx.test", connect_timeout=5).deliver(1)
        took = time.monotonic() - started
    finally:
        thread.join(5)
        door.close()
        controller.stop()
    assert delivery.outcome == "accepted", delivery.error
    assert delivery.delay is not None and 0.7 <= delivery.delay <= took
    assert handler.ids == [delivery.msg_id]


def test_a_port_nobody_listens_on_counts_as_refused() -> None:
    sender = Sender(LOOPBACK, _free_port(), "alice@mx.test", connect_timeout=5)
    delivery = sender.deliver(1)
    assert delivery.outcome == "refused" and "ConnectionRefusedError" in delivery.error
    s = sender.summary()
    assert (s["sender_accepted"], s["sender_refused"], s["sender_failed"]) == (0, 1, 0)
    assert s["longest_delivery_delay"] < 1.0


def test_a_refusal_that_took_long_is_not_a_delivery_delay() -> None:
    """A mail refused after 0.6 s was never delivered: it must not show up as the longest delay."""
    door = socket.socket()
    door.bind((LOOPBACK, 0))
    door.listen(1)

    def refuse_late() -> None:
        door.settimeout(5)
        client, _ = door.accept()
        time.sleep(0.6)
        client.sendall(b"554 5.3.2 not now\r\n")
        time.sleep(0.2)
        client.close()

    thread = threading.Thread(target=refuse_late, daemon=True)
    thread.start()
    try:
        sender = Sender(LOOPBACK, door.getsockname()[1], "alice@mx.test", connect_timeout=5)
        delivery = sender.deliver(1)
    finally:
        thread.join(5)
        door.close()
    assert delivery.outcome == "refused", delivery.error
    s = sender.summary()
    assert s["longest_delivery_delay"] == 0.0
    assert s["longest_unaccepted_s"] >= 0.6


def test_the_traffic_summary_keeps_its_keys_and_adds_the_senders_accepted_mails(smtp: tuple[Server, int]) -> None:
    _, port = smtp
    traffic = Traffic(LOOPBACK, port, 0.05, 0.05, "alice@mx.test", None)
    before = set(traffic.summary())
    sender = traffic.add_sender(0.2, 5)
    first = sender.deliver(1)
    traffic.accepted.append("<mail-loop-1@client.lab>")
    s = traffic.summary()
    assert before <= set(s)  # the keys bench/ and tests/e2e read are all still there
    assert s["accepted"] == ["<mail-loop-1@client.lab>", first.msg_id]
    assert (s["sender_accepted"], s["sender_refused"], s["failed"]) == (1, 0, 0)


def test_a_server_that_never_greets_is_a_failed_delivery_after_the_timeout() -> None:
    silent = socket.create_server((LOOPBACK, 0))  # the kernel completes the handshake; nobody speaks
    try:
        sender = Sender(LOOPBACK, silent.getsockname()[1], "alice@mx.test", connect_timeout=0.3)
        delivery = sender.deliver(1)
    finally:
        silent.close()
    assert delivery.outcome == "failed" and "timed out" in delivery.error
    assert delivery.delay is not None and delivery.delay >= 0.3
    assert sender.summary()["sender_failed"] == 1


def test_a_mail_accepted_at_data_counts_as_accepted_whatever_quit_gets() -> None:
    # a server that accepts the mail and then answers QUIT with an error (or hangs up): the mail
    # was delivered, so it is accepted (and in the lost-mail check), not "refused"
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 mx ESMTP\r\n")
        while line := f.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                while f.readline() not in (b".\r\n", b""):
                    pass
                conn.sendall(b"250 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"554 not today\r\n")
                break
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        delivery = Sender(LOOPBACK, port, "alice@mx", connect_timeout=5).deliver(1)
    finally:
        listener.close()
    assert delivery.outcome == "accepted", delivery.error
