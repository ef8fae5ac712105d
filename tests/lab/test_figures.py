"""The lab's run figures from a journal, events.jsonl and apt-cacher-ng's log as they are written."""

from __future__ import annotations

import json
from pathlib import Path

from upgrader.lab.figures import collect, render


def test_step_times_apt_summary_and_proxy_cache_share(tmp_path: Path) -> None:
    run = tmp_path / "mailhost" / "20261202T010000Z-abcd"
    run.mkdir(parents=True)
    journal = [
        {"kind": "begin", "key": "upgrade[2]", "ts": "2026-12-02T01:00:00+00:00"},
        {"kind": "done", "key": "upgrade[2]", "ts": "2026-12-02T01:11:40.5+00:00"},
        {"kind": "begin", "key": "upgrade[10]", "ts": "2026-12-02T01:12:00+00:00"},
        {"kind": "done", "key": "upgrade[10]", "ts": "2026-12-02T01:12:30+00:00"},
        {"kind": "done", "key": "clone.start", "ts": "2026-12-02T00:59:00+00:00"},
    ]
    (run / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in journal))
    lines = ["179 upgraded, 12 newly installed, 3 to remove and 0 not upgraded.",
             "Need to get 10.5 MB/179 MB of archives.", "Fetched 179 MB in 41s (4,366 kB/s)"]
    (run / "events.jsonl").write_text("".join(json.dumps({"event": "StepOutput", "key": "upgrade[2]", "line": t}) + "\n"
                                              for t in lines))
    log = tmp_path / "apt-cacher.log"
    log.write_text("1796170000|I|9000000|127.0.0.1|debrep/pool/before-the-run.deb\n"
                   "1796173200|O|3000000|127.0.0.1|debrep/pool/a.deb\n1796173201|I|1000000|127.0.0.1|debrep/pool/b.deb\n"
                   "1796173202|O|1000000|127.0.0.1|debrep/pool/b.deb\n")
    figures = collect(run, log)
    assert [(s.key, s.seconds) for s in figures.steps] == [("upgrade[2]", 700.5), ("upgrade[10]", 30.0)]
    assert (figures.steps[0].upgraded, figures.steps[0].installed, figures.steps[0].removed) == (179, 12, 3)
    assert (figures.steps[0].to_download, figures.steps[0].archives) == ("10.5 MB", "179 MB")
    assert figures.packages == 191
    text = render(figures)
    assert "fetched 179 MB in 41s" in text
    assert "served 4.0 MB, fetched 1.0 MB from the mirror: 75% from its cache" in text
