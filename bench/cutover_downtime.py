#!/usr/bin/env python3
"""Cutover downtime on the lab, as clients see it, for each takeover strategy.

    .venv/bin/python bench/cutover_downtime.py [--strategies mac_move ip_move] [--hold on off] [--spool 1000] [--new 100] [--repeat 1]

Per run: a pristine mailhost; `--spool` messages written into its Maildir; `upgrader start` with a
window far ahead, so the run parks after pre-sync (the spool is on the twin); `--new` messages
delivered over SMTP (what arrived since the last pre-sync pass); then the client namespace starts
probing the service address (TCP connect at 20 Hz; with --mail-loop also an SMTP delivery every
SECONDS, one after the other) and the realistic sender runs beside it (a delivery every 200 ms, each on its own
connection and thread, 30 s connect timeout: upgrader/lab/sender.py), and
`upgrader resume --now --yes` pre-syncs again and cuts over. Reported: the orchestrator's forecast
(last pre-sync pass + quiesce + takeover + service start, upgrader/forecast.py) and its observed
downtime (quiesce -> the service answers) with its parts from the run's journal (quiesce, final
sync, sync_close, takeover, claim_address, resume, service back: upgrader/lab/window_parts.py),
the sync session's open (before the quiesce) and close (the key's revoke on prod, in the window)
apart, the final sync's rsync alone (`final_sync_s`; a session opened inside the window, on a
resume or a reconnect, is `final_sync_setup_s`), the client's
longest TCP outage and refused SMTP deliveries, the sender's refused and failed deliveries and its
longest delay of one delivery, and messages lost (accepted but not on the new prod: seeded + new +
those accepted during the cutover, the sender's included). With the client hold on (the default
of the plan; `--hold off` runs with `takeover.hold: []`) also `held_s`: from the hold in place
(hold_clients done) until the service answers. It is a lower bound of how long clients were held:
libvirt may drop SYNs already during hold_clients' own ~0.6 s; what decides the delays (a SYN is
retransmitted at +1 s, then +3 s) is the sender's longest delay, measured on the client side.
Needs root; brings the lab up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from labrun import lab_session, machine, plan_file, status, upgrader  # noqa: I001

from upgrader.lab import Lab
from upgrader.lab.window_parts import journal_window_parts
from upgrader.step_keys import presync_passes


def one(lab: Lab, work: Path, strategy: str, hold: bool, spool: int, new: int, mail_loop: float) -> dict[str, Any]:
    lab.pristine()
    lab.seed_mails(spool, tag="seed")
    name = f"{strategy}-hold-{'on' if hold else 'off'}"
    state = work / f"state-{name}"
    plan = plan_file(work / f"{name}.yml", strategy=strategy, window=True, hold=hold)
    done = upgrader(state, "start", "mailhost", "--plan", str(plan))
    if done.returncode != 0 or status(state)["phase"] != "await_window":
        raise SystemExit(f"{strategy}: the run did not park before the window")
    sent = lab.send_mails(new, tag="new")
    traffic = lab.client_popen([sys.executable, "-m", "upgrader.lab.traffic", "--log", str(work / f"traffic-{name}.jsonl"),
                                "--interval", str(mail_loop), "--sender-interval", "0.2", "--sender-connect-timeout", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)  # the probes are running before the cutover begins
    started = time.monotonic()
    done = upgrader(state, "resume", "mailhost", "--now", "--yes")
    took = time.monotonic() - started
    time.sleep(2)
    traffic.send_signal(signal.SIGTERM)
    out, _ = traffic.communicate(timeout=90)  # the sender's deliveries in flight end within their 30 s timeout
    seen = json.loads(out.decode().strip().splitlines()[-1])
    if done.returncode != 0:
        raise SystemExit(f"{strategy}: cutover failed:\n{done.stdout[-3000:]}")
    record = status(state)
    outputs = record["outputs"]
    on_prod = lab.message_ids("prod")
    expected = {f"<seed-{i}@lab>" for i in range(1, spool + 1)} | set(seen["accepted"])
    final = outputs["cutover.final_sync"]
    passes = [v for _, v in presync_passes(outputs)]
    forecast = outputs["await_window"]["forecast"]  # the forecast the fit was decided with, after the fresh pre-sync
    [journal] = state.glob("mailhost/*/journal.jsonl")
    parts = journal_window_parts(journal)
    return {
        "strategy": strategy,
        "hold": "on" if hold else "off",
        "hold_setup_s": outputs.get("cutover.hold_clients", {}).get("seconds"),  # before the quiesce
        "held_s": parts.get("held"),
        "spool": spool,
        "new_since_presync": sent.get("sent", 0),
        "forecast_s": forecast["total"],
        "forecast_parts": {k: forecast[k] for k in ("last_pass", "quiesce", "takeover", "service_start")},
        "presync_passes": len(passes),
        "final_sync_s": final["seconds"],  # the rsync pass alone (the session was opened before the quiesce)
        "final_sync_setup_s": final.get("setup_seconds", 0.0),  # a session opened inside the window
        "final_sync_files": final["files"],
        "sync_open_s": outputs["cutover.sync_open"]["seconds"],  # before the quiesce: not in the window
        "sync_close_s": outputs["cutover.sync_close"]["seconds"],  # the key's revoke on prod: in the window
        "observed_s": outputs["cutover.service_back"]["downtime"],
        "window_parts_s": parts,
        "client_tcp_longest_s": seen["longest_outage"],
        "client_tcp_outages": seen["outages"],
        "smtp_accepted": len(seen["accepted"]) - seen["sender_accepted"],
        "smtp_refused": seen["failed"],
        "sender_deliveries": seen["sender_deliveries"],
        "sender_refused": seen["sender_refused"],
        "sender_failed": seen["sender_failed"] + seen["sender_unfinished"],
        "longest_delivery_delay_s": seen["longest_delivery_delay"],
        "lost": len(expected - on_prod),
        "resume_wall_s": round(took, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=["mac_move", "ip_move"], choices=["mac_move", "ip_move"])
    p.add_argument("--hold", nargs="+", default=["on", "off"], choices=["on", "off"], help="the client hold (takeover.hold)")
    p.add_argument("--spool", type=int, default=1000, help="messages in the spool before the run")
    p.add_argument("--new", type=int, default=100, help="messages delivered after the last pre-sync pass")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--mail-loop", type=float, default=0.0, metavar="SECONDS",
                   help="also deliver a mail every SECONDS, one after the other (the bench before issue 14: 0.05); "
                        "default 0: off — with the 20 Hz probe and the sender beside it the 1-vCPU TCG guest is saturated "
                        "(pre-sync passes of 20-30 s instead of 1 s, measured 2026-12-02)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = p.parse_args()
    rows = []
    with lab_session(args.keep) as lab, tempfile.TemporaryDirectory(prefix="bench-cutover-") as tmp:
        for n in range(args.repeat):
            for strategy, hold in itertools.product(args.strategies, args.hold):
                (Path(tmp) / str(n)).mkdir(exist_ok=True)
                row = one(lab, Path(tmp) / str(n), strategy, hold == "on", args.spool, args.new, args.mail_loop)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine()}")
    print("| takeover | hold (set up / held) | spool | new since pre-sync | forecast | observed (quiesce → service) | window parts | final sync (rsync) | "
          "sync open (before) / close (in window) | client: longest TCP outage | SMTP accepted / refused | "
          "sender: refused / failed of | longest delivery delay | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        parts = " + ".join(f"{k} {v:.2f}" for k, v in r["window_parts_s"].items() if k not in ("total", "held"))
        hold = f"on ({r['hold_setup_s']:.2f} s / {r['held_s']:.2f} s)" if r["hold"] == "on" and r["held_s"] is not None else r["hold"]
        print(f"| {r['strategy']} | {hold} | {r['spool']} | {r['new_since_presync']} | {r['forecast_s']:.2f} s | {r['observed_s']:.2f} s | "
              f"{parts} | {r['final_sync_s']:.2f} s, {r['final_sync_files']} files | "
              f"{r['sync_open_s']:.2f} s / {r['sync_close_s']:.2f} s | {r['client_tcp_longest_s']:.2f} s | "
              f"{r['smtp_accepted']} / {r['smtp_refused']} | {r['sender_refused']} / {r['sender_failed']} of {r['sender_deliveries']} | "
              f"{r['longest_delivery_delay_s']:.2f} s | {r['lost']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
