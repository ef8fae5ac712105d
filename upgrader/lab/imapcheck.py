"""IMAP probe, meant to run in the lab's client namespace against the Debian mailhost:

    ip netns exec upg-client /path/to/python -m upgrader.lab.imapcheck --host 192.0.2.10

Connects to HOST:143, STARTTLS (the guest's snakeoil certificate: not verified, lab only), logs
in, selects INBOX and prints one JSON line: {"ok", "uidvalidity", "messages", "message_ids"
(with --ids), "seconds"} or {"ok": false, "error"}. Exit code 0 if ok, 1 if not."""

from __future__ import annotations

import argparse
import email.parser
import imaplib
import json
import ssl
import sys
import time
from typing import Any

from upgrader.lab import config as C


def check(host: str, user: str, password: str, *, want_ids: bool = False, timeout: float = 15.0) -> dict[str, Any]:
    started = time.monotonic()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the guest's self-signed snakeoil certificate
    with imaplib.IMAP4(host, 143, timeout=timeout) as imap:
        imap.starttls(ssl_context=ctx)
        imap.login(user, password)
        typ, data = imap.select("INBOX", readonly=True)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT INBOX: {data!r}")
        messages = int(data[0] or 0)
        _, uv = imap.response("UIDVALIDITY")
        out: dict[str, Any] = {"ok": True, "uidvalidity": int(uv[0]) if uv and uv[0] else None,
                               "messages": messages}
        if want_ids:
            ids: list[str] = []
            if messages:
                _, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                parser = email.parser.BytesHeaderParser()
                for item in fetched:
                    if isinstance(item, tuple):
                        mid = parser.parsebytes(item[1]).get("Message-ID")
                        if mid:
                            ids.append(mid.strip())
            out["message_ids"] = ids
        imap.logout()
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default=C.SERVICE_IP)
    ap.add_argument("--user", default=C.DEBIAN_IMAP_USER)
    ap.add_argument("--password", default=C.DEBIAN_IMAP_PASSWORD)
    ap.add_argument("--ids", action="store_true", help="also list every message's Message-ID")
    ap.add_argument("--timeout", type=float, default=15.0)
    args = ap.parse_args(argv)
    try:
        result = check(args.host, args.user, args.password, want_ids=args.ids, timeout=args.timeout)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
