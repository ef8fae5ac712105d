"""Read a mailbox back over IMAP, as a mail client would; meant for the lab's client namespace:

    ip netns exec upg-client /path/to/python -m upgrader.lab.imapcheck [--user alice --password ...]

Logs in (after STARTTLS when the server offers it; the lab's certificate is self-signed, so it is
not verified), selects the folder read-only and prints one JSON object: the folder's UIDVALIDITY,
UIDNEXT, the number of messages and every Message-ID in it. A client that cached the folder keeps
its cache only while UIDVALIDITY stays the same: a changed value makes it download the whole
mailbox again. Exit code 0 if the login and the read worked, 1 otherwise (the JSON says why).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import re
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field

from upgrader.lab import config as C

IMAP_PORT = 143
_STATUS = re.compile(rb"\((?P<items>[^)]*)\)")
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class MailboxView:
    ok: bool
    folder: str
    uidvalidity: int | None = None
    uidnext: int | None = None
    messages: int = 0
    message_ids: list[str] = field(default_factory=list)
    starttls: bool = False
    error: str | None = None
    seconds: float = 0.0


def _status_items(raw: bytes) -> dict[str, int]:
    match = _STATUS.search(raw)
    words = (match.group("items") if match else b"").split()
    return {words[i].decode().upper(): int(words[i + 1]) for i in range(0, len(words) - 1, 2)
            if words[i + 1].isdigit()}


def message_ids(fetched: list[object]) -> list[str]:
    """The Message-IDs in a FETCH (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]) answer, in order."""
    out: list[str] = []
    for part in fetched:
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
            found = _MESSAGE_ID.search(part[1])
            if found:
                out.append(found.group(1).decode(errors="replace"))
    return out


def read(host: str, port: int, user: str, password: str, folder: str, timeout: float) -> MailboxView:
    started = time.monotonic()
    view = MailboxView(ok=False, folder=folder)
    try:
        imap = imaplib.IMAP4(host, port, timeout=timeout)
        try:
            if "STARTTLS" in imap.capabilities:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # the lab's snakeoil certificate
                imap.starttls(context)
                view.starttls = True
            imap.login(user, password)
            typ, data = imap.status(folder, "(UIDVALIDITY UIDNEXT MESSAGES)")
            if typ != "OK" or not data or not isinstance(data[0], bytes):
                raise imaplib.IMAP4.error(f"STATUS {folder}: {typ} {data!r}")
            items = _status_items(data[0])
            view.uidvalidity, view.uidnext = items.get("UIDVALIDITY"), items.get("UIDNEXT")
            typ, data = imap.select(folder, readonly=True)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"SELECT {folder}: {typ} {data!r}")
            view.messages = int(data[0] or 0) if data and isinstance(data[0], bytes) else 0
            if view.messages:
                typ, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                if typ != "OK":
                    raise imaplib.IMAP4.error(f"FETCH: {typ}")
                view.message_ids = message_ids(list(fetched))
            view.ok = True
            imap.logout()
        finally:
            try:
                imap.shutdown()
            except OSError:
                pass
    except (OSError, imaplib.IMAP4.error, ssl.SSLError, ValueError) as exc:
        view.error = f"{type(exc).__name__}: {exc}"
    view.seconds = round(time.monotonic() - started, 3)
    return view


def compare(view: MailboxView, before: dict[str, object] | None, accepted: list[str]) -> list[str]:
    """What a client would notice after the cutover: a mail accepted over SMTP that is not in the
    folder, a changed UIDVALIDITY (the client drops its cache and downloads everything again)."""
    problems = []
    missing = [m for m in accepted if m not in set(view.message_ids)]
    if missing:
        problems.append(f"{len(missing)} of {len(accepted)} accepted mails are not in {view.folder}: "
                        + ", ".join(missing[:5]))
    if before is not None and before.get("uidvalidity") != view.uidvalidity:
        problems.append(f"UIDVALIDITY of {view.folder} changed: {before.get('uidvalidity')} -> {view.uidvalidity}"
                        " (clients download the whole folder again)")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upgrader.lab.imapcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=C.SERVICE_IP)
    p.add_argument("--port", type=int, default=IMAP_PORT)
    p.add_argument("--user", default=C.DEBIAN_IMAP_USER)
    p.add_argument("--password", default=C.DEBIAN_IMAP_PASSWORD, help="default: the lab Debian guest's")
    p.add_argument("--folder", default="INBOX")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--before", type=argparse.FileType("r"), help="an earlier JSON answer: UIDVALIDITY must be the same")
    p.add_argument("--accepted", type=argparse.FileType("r"),
                   help="upgrader.lab.traffic's JSON summary: every accepted Message-ID must be in the folder")
    args = p.parse_args(argv)
    view = read(args.host, args.port, args.user, args.password, args.folder, args.timeout)
    if not (args.before or args.accepted):
        print(json.dumps(asdict(view)))
        return 0 if view.ok else 1
    if not view.ok:
        print(f"IMAP read-back failed: {view.error}", file=sys.stderr)
        return 1
    before = json.loads(args.before.read().strip().splitlines()[-1]) if args.before else None
    accepted = list(json.loads(args.accepted.read().strip().splitlines()[-1])["accepted"]) if args.accepted else []
    problems = compare(view, before, accepted)
    print(f"IMAP read-back on {args.host}: {view.messages} mails in {view.folder}, "
          f"{len(accepted)} accepted during the run, UIDVALIDITY {view.uidvalidity}"
          + (f" (before: {before.get('uidvalidity')})" if before else ""))
    for problem in problems:
        print(f"  LOST: {problem}")
    if not problems:
        print("  every accepted mail is there; UIDVALIDITY unchanged: clients keep their caches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
