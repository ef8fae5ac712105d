"""The isolated twin's package proxy on the lab (plan `staging.packages`, issue 13): a tiny HTTP
server on the orchestrator's 127.0.0.1 stands in for the proxy (apt-cacher-ng in the Debian lab).
One run: the twin's upgrade steps reach it through upgrader's remote forward over the twin's SSH
connection - directly at 127.0.0.1:PORT, and through `http_proxy` as apt/pkg/fetch would - and the
marker it serves shows up in the steps' output. Without the forward (prod before the run, the
new prod after it) the same wget fails: the staging segment has no route to it."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import fresh, plan_variant, status, upgrader  # noqa: I001
from upgrader.lab import Lab

pytestmark = pytest.mark.lab

PROXY = """\
import http.server, sys
token = sys.argv[2]
class Proxy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{token} {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the stand-in proxy exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the stand-in proxy does not listen on 127.0.0.1:{port}")


def step_output(state: Path) -> list[tuple[str, str]]:
    events = [json.loads(line) for line in next(state.glob("mailhost/*/events.jsonl")).read_text().splitlines() if line]
    return [(e["key"], e["line"]) for e in events if "line" in e and "key" in e]


def test_twin_fetches_through_the_forward_and_nothing_else(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    port, token = free_port(), "marker-" + secrets.token_hex(6)
    proxy = subprocess.Popen([sys.executable, "-c", PROXY, str(port), token], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proxy)
        direct = f"wget -q -O- http://127.0.0.1:{port}/marker"  # (busybox 1.35's wget -T segfaults; its wget has no no_proxy)
        # without the forward the guest cannot reach the orchestrator's proxy: refused, not a crash
        before = lab.guest_exec("prod", direct + " 2>&1; echo rc=$?")
        assert token not in before.stdout and "Connection refused" in before.stdout and "rc=1" in before.stdout, before.stdout
        plan = plan_variant(
            tmp_path, "  twin_name: \"{domain}-twin\"\n",
            f"  twin_name: \"{{domain}}-twin\"\n  packages: {{proxy: \"http://127.0.0.1:{port}\"}}\n")
        text = plan.read_text().replace(
            "upgrade:                      # shaped like freebsd-update: fetch, install, reboot, install, install\n",
            "upgrade:\n"
            f"  - name: fetch from the package proxy\n    run: env -u http_proxy {direct}\n    timeout: 2m\n"
            "  - name: fetch through http_proxy, as apt/pkg/fetch do\n"
            "    run: wget -q -O- http://deb.debian.invalid/dists/trixie/Release\n    timeout: 2m\n", 1)
        assert "fetch from the package proxy" in text
        plan.write_text(text)
        checked = upgrader(tmp_path / "check", "start", "mailhost", "--plan", str(plan), "--dry-run")
        assert checked.returncode == 0 and f"forwarded over upgrader's SSH connection to the package proxy 127.0.0.1:{port}" in \
            checked.stdout.replace("\n", " "), checked.stdout
        state = tmp_path / "state"
        started = time.monotonic()
        done = upgrader(state, "start", "mailhost", "--plan", str(plan))
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        assert status(state)["phase"] == "completed"
        output = step_output(state)
        assert ("upgrade[0]", f"{token} /marker") in output, output
        assert ("upgrade[1]", f"{token} http://deb.debian.invalid/dists/trixie/Release") in output, output
        # the upgraded twin, now prod on the production segment: no forward, no way to the proxy
        after = upgrader(state, "ssh", "mailhost", "--prod", "--", "sh", "-c", direct + " 2>&1; echo rc=$?")
        assert token not in after.stdout and "Connection refused" in after.stdout and "rc=1" in after.stdout, after.stdout
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=10)
    print(f"run with the package forward: {took:.0f} s to completed; marker {token} fetched twice through it")
