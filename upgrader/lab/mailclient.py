"""SMTP traffic probe, meant to run in the lab's client namespace:

    ip netns exec upg-client /path/to/python -m upgrader.lab.mailclient --count 50

Sends COUNT messages to HOST:25 with smtplib (one connection for all, or `--each` for one
connection per message) and prints one JSON object: sent, failed, errors, seconds.
`--probe` only reads the banner and says EHLO/QUIT. Exit code 0 if everything was accepted.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import time
from email.message import EmailMessage

from upgrader.lab import config as C


def _message(i: int, sender: str, rcpt: str, tag: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = f"lab probe {tag} #{i}"
    msg["X-Lab-Probe"] = f"{tag}-{i}"
    msg.set_content(f"probe {tag} message {i}\n.a line starting with a dot\n.\nend\n")
    return msg


def send(host: str, port: int, count: int, rcpt: str, sender: str, tag: str, each: bool,
         timeout: float) -> dict[str, object]:
    started = time.monotonic()
    sent, errors = 0, []
    smtp: smtplib.SMTP | None = None
    for i in range(1, count + 1):
        try:
            if smtp is None:
                smtp = smtplib.SMTP(host, port, timeout=timeout)
                smtp.ehlo("lab-client")
            refused = smtp.send_message(_message(i, sender, rcpt, tag), from_addr=sender, to_addrs=[rcpt])
            if refused:
                errors.append(f"#{i}: refused {refused}")
            else:
                sent += 1
            if each:
                smtp.quit()
                smtp = None
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"#{i}: {type(exc).__name__}: {exc}")
            if smtp is not None:
                try:
                    smtp.close()
                except OSError:
                    pass
            smtp = None
    if smtp is not None:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
    return {"sent": sent, "failed": count - sent, "errors": errors[:20],
            "seconds": round(time.monotonic() - started, 3)}


def probe(host: str, port: int, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    try:
        smtp = smtplib.SMTP(timeout=timeout)
        code, banner = smtp.connect(host, port)
        ehlo = smtp.ehlo("lab-client")
        smtp.quit()
        ok = code == 220 and ehlo[0] == 250
        return {"ok": ok, "banner": banner.decode(errors="replace"), "seconds": round(time.monotonic() - started, 3)}
    except (OSError, smtplib.SMTPException) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upgrader.lab.mailclient")
    p.add_argument("--host", default=C.SERVICE_IP)
    p.add_argument("--port", type=int, default=C.SMTP_PORT)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--to", default="alice@mailhost")
    p.add_argument("--from", dest="sender", default="probe@client.lab")
    p.add_argument("--tag", default="probe")
    p.add_argument("--each", action="store_true", help="one SMTP connection per message")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--probe", action="store_true", help="banner + EHLO + QUIT only")
    args = p.parse_args(argv)
    if args.probe:
        result = probe(args.host, args.port, args.timeout)
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    result = send(args.host, args.port, args.count, args.to, args.sender, args.tag, args.each, args.timeout)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
