"""Client traffic during a run, meant for the lab's client namespace:

    ip netns exec upg-client python -m upgrader.lab.traffic --log /tmp/traffic.jsonl

Until SIGTERM/SIGINT it (a) delivers one mail per SMTP connection every --interval seconds (a
unique Message-ID each, logged when the server accepted it) and (b) opens a TCP connection to the
port every --tcp-interval seconds (20 Hz by default), logging up/down transitions. With
--sender-interval it also runs the realistic sender (upgrader.lab.sender: a delivery every
--sender-interval seconds, each on its own connection and thread, --sender-connect-timeout). On
exit it prints a JSON summary: accepted Message-IDs (the sender's too), failed attempts of the
mail loop, the longest TCP outage — the client-observed downtime — and, with the sender, its
`sender_*` counts and `longest_delivery_delay`.
"""

from __future__ import annotations

import argparse
import json
import signal
import smtplib
import socket
import threading
import time
from email.message import EmailMessage
from typing import Any

from upgrader.lab import config as C
from upgrader.lab.sender import Sender


class Traffic:
    def __init__(self, host: str, port: int, interval: float, tcp_interval: float, to: str, log: str | None) -> None:
        self.host, self.port, self.interval, self.tcp_interval, self.to = host, port, interval, tcp_interval, to
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self.failed = 0
        self.errors: list[str] = []
        self.outages: list[tuple[float, float]] = []
        self.log = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115
        self.lock = threading.Lock()
        self.sender: Sender | None = None

    def add_sender(self, interval: float, connect_timeout: float) -> Sender:
        self.sender = Sender(self.host, self.port, self.to, interval=interval, connect_timeout=connect_timeout, write=self._write)
        return self.sender

    def _write(self, **entry: Any) -> None:
        if self.log is not None:
            with self.lock:
                self.log.write(json.dumps({"t": round(time.time(), 3), **entry}) + "\n")
                self.log.flush()

    def mail_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            msg_id = f"<traffic-{int(time.time())}-{n}@client.lab>"
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "traffic@client.lab", self.to, f"traffic #{n}", msg_id
            msg.set_content(f"message {n}\n")
            started = time.monotonic()
            try:
                with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
                    refused = smtp.send_message(msg)
                if refused:
                    raise smtplib.SMTPException(f"refused {refused}")
                self.accepted.append(msg_id)
                self._write(mail="accepted", id=msg_id)
            except (OSError, smtplib.SMTPException) as exc:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._write(mail="failed", id=msg_id, error=str(exc))
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def tcp_loop(self) -> None:
        down_since: float | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection((self.host, self.port), timeout=min(0.5, self.tcp_interval * 4)):
                    pass
                if down_since is not None:
                    self.outages.append((down_since, time.monotonic()))
                    self._write(tcp="up", outage=round(time.monotonic() - down_since, 3))
                    down_since = None
            except OSError:
                if down_since is None:
                    down_since = started
                    self._write(tcp="down")
            self.stop.wait(max(0.0, self.tcp_interval - (time.monotonic() - started)))
        if down_since is not None:
            self.outages.append((down_since, time.monotonic()))

    def summary(self) -> dict[str, Any]:
        longest = max((b - a for a, b in self.outages), default=0.0)
        out: dict[str, Any] = {"accepted": list(self.accepted), "failed": self.failed, "errors": self.errors,
                               "outages": len(self.outages), "longest_outage": round(longest, 3),
                               "total_outage": round(sum(b - a for a, b in self.outages), 3)}
        if self.sender is not None:  # its accepted mails join `accepted`, so the lost-mail check covers them
            sent = self.sender.summary()
            out["accepted"] += sent.pop("sender_accepted_ids")
            out.update(sent)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upgrader.lab.traffic")
    p.add_argument("--host", default=C.SERVICE_IP)
    p.add_argument("--port", type=int, default=C.SMTP_PORT)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between mails of the mail loop (default 0.05; 0: no mail loop)")
    p.add_argument("--tcp-interval", type=float, default=0.05, help="seconds between TCP probes (default 0.05 = 20 Hz)")
    p.add_argument("--to", default="alice@mailhost")
    p.add_argument("--sender-interval", type=float, metavar="SECONDS",
                   help="also run the realistic sender: a delivery every SECONDS, each on its own connection (e.g. 0.2)")
    p.add_argument("--sender-connect-timeout", type=float, default=30.0, help="the sender's connect timeout (default 30 s)")
    p.add_argument("--log", help="JSON lines of every event")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this long")
    p.add_argument("--report", metavar="SUMMARY_JSON", help="print a one-line report of a saved summary and exit")
    args = p.parse_args(argv)
    if args.report:
        with open(args.report, encoding="utf-8") as handle:
            s = json.load(handle)
        loop_accepted = len(s["accepted"]) - s.get("sender_accepted", 0)  # `accepted` holds the sender's too
        print(f"client mail loop: {loop_accepted} mails accepted, {s['failed']} refused; "
              f"TCP at 20 Hz: {s['outages']} outage(s), longest {s['longest_outage']} s")
        if "sender_deliveries" in s:
            print(f"sender: {s['sender_accepted']} accepted, {s['sender_refused']} refused, {s['sender_failed']} failed "
                  f"of {s['sender_deliveries']}; longest delivery delay {s['longest_delivery_delay']} s")
        return 0
    traffic = Traffic(args.host, args.port, args.interval, args.tcp_interval, args.to, args.log)
    signal.signal(signal.SIGTERM, lambda *_: traffic.stop.set())
    signal.signal(signal.SIGINT, lambda *_: traffic.stop.set())
    threads = [threading.Thread(target=traffic.tcp_loop)]
    if args.interval > 0:
        threads.append(threading.Thread(target=traffic.mail_loop))
    if args.sender_interval:
        threads.append(threading.Thread(target=traffic.add_sender(args.sender_interval, args.sender_connect_timeout).run,
                                        args=(traffic.stop,)))
    for t in threads:
        t.start()
    traffic.stop.wait(args.max_seconds)
    traffic.stop.set()
    for t in threads:
        t.join()
    print(json.dumps(traffic.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
