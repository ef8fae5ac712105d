"""A client for checking a client hold, run inside the client namespace:

    python -m upgrader.lab.holdprobe --host 192.0.2.10 [--port 25]

It opens one SMTP connection at once and prints {"banner": ...} (or {"error": ...} and exits 1),
then answers one JSON line per command read from stdin:

    connect SECONDS  a new TCP connect with that timeout: {"connect": "ok"|"timeout"|"refused"|"error: ..."}
    noop             NOOP on the first connection: {"reply": "250 ..."} or {"error": ...}
    quit             QUIT on it, then exit

So a test sees both sides of the hold: new connections are silently dropped (a timeout, not a
refusal) while the connection opened before it still talks.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _connect(host: str, port: int, timeout: float) -> str:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return "ok"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.holdprobe")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=15.0, help="for the first connection and its replies")
    args = parser.parse_args(argv)
    try:
        first = socket.create_connection((args.host, args.port), timeout=args.timeout)
        reader = first.makefile("rb")
        _say(banner=reader.readline().decode(errors="replace").strip())
    except OSError as exc:
        _say(error=str(exc))
        return 1
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "connect":
            _say(connect=_connect(args.host, args.port, float(rest or 0.3)))
        elif word in ("noop", "quit"):
            try:
                first.sendall(word.upper().encode() + b"\r\n")
                _say(reply=reader.readline().decode(errors="replace").strip())
            except OSError as exc:
                _say(error=str(exc))
            if word == "quit":
                break
        else:
            _say(error=f"unknown command {word!r}")
    first.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
