"""SSH ProxyCommand for the lab: connect a TCP socket to HOST PORT and pump stdin/stdout.

Run inside an access namespace it is a path into a segment, an alternative to the lab's default
ProxyCommand (`ip netns exec upg-acc-prod /usr/bin/busybox nc %h %p`):

    ip netns exec upg-acc-prod /path/to/python -m upgrader.lab.proxy %h %p

`--wait-banner SECONDS` instead polls until HOST:PORT sends a line starting with `SSH-` (the
readiness check of `lab up`), prints it and exits 0; exit 1 on timeout.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time


def pump(host: str, port: int, connect_timeout: float) -> int:
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        print(f"upgrader.lab.proxy: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    stdin_open = True
    try:
        sel.register(stdin, selectors.EVENT_READ, "in")
    except (PermissionError, ValueError):  # a regular file or /dev/null: nothing to wait for
        data = os.read(stdin, 1 << 20)
        while data:
            sock.sendall(data)
            data = os.read(stdin, 1 << 20)
        stdin_open = False
        sock.shutdown(socket.SHUT_WR)
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(stdin, 65536)
                if not data:
                    sel.unregister(stdin)
                    stdin_open = False
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        return 0
                    continue
                sock.sendall(data)
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    n = os.write(stdout, view)
                    view = view[n:]
        if not stdin_open and not sel.get_map():
            return 0


def wait_banner(host: str, port: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                line = sock.makefile("rb").readline(256)
                if line.startswith(b"SSH-"):
                    print(line.decode(errors="replace").strip())
                    return 0
                last = f"unexpected greeting {line[:40]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    print(f"no SSH banner from {host}:{port} within {timeout:.0f} s ({last})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.proxy")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--wait-banner", type=float, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.wait_banner is not None:
        return wait_banner(args.host, args.port, args.wait_banner)
    return pump(args.host, args.port, args.connect_timeout)


if __name__ == "__main__":
    sys.exit(main())
