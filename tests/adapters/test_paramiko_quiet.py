"""A failed SSH handshake (a rebooting guest's port answers before its sshd does) must not print
paramiko's tracebacks on the operator's terminal: the adapter handles the exception itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

PROBE = """
import sys
import paramiko
import upgrader.adapters.fabric_shell  # noqa: F401 - what the CLI imports before it connects
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    client.connect("127.0.0.1", int(sys.argv[1]), username="x", banner_timeout=2, timeout=2,
                   allow_agent=False, look_for_keys=False)
except Exception as exc:  # the adapter turns this into a retry or an error with a hint
    print("raised", type(exc).__name__)
"""


def test_a_failed_handshake_prints_no_traceback() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def close_at_once() -> None:  # accepts and closes: paramiko reads EOF instead of a banner
        for _ in range(4):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_at_once, daemon=True).start()
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(server.getsockname()[1])],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert "raised" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception (client)" not in done.stderr, done.stderr
