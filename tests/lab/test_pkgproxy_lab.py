"""The lab's apt-cacher-ng for real, on its own (loopback only, no guest): it starts with the
lab's config, refuses every URL outside the Debian registry without contacting it, and stops by
its pid."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from upgrader.lab import config as C
from upgrader.lab import pkgproxy

pytestmark = pytest.mark.lab


def test_proxy_runs_from_the_lab_dir_and_refuses_other_hosts(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path(pkgproxy.BINARY).exists():
        pytest.skip("needs root and apt-cacher-ng")
    paths = C.LabPaths(tmp_path)
    pid = pkgproxy.start(paths)
    try:
        assert pkgproxy.pid(paths) == pid and pkgproxy.start(paths) == pid  # idempotent
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(tmp_path / "etc/apt-cacher-ng").encode() in cmdline
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": pkgproxy.url()}))
        for url in ("http://example.invalid/debian/dists/bookworm/Release", "http://example.invalid/"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open(url, timeout=10)
            assert refused.value.code == 403, url
        log = (tmp_path / "logs/apt-cacher-ng/apt-cacher.log")
        assert "|I|" not in (log.read_text() if log.exists() else "")  # nothing was fetched
    finally:
        stopped = pkgproxy.stop(paths)
    assert stopped == [f"apt-cacher-ng ({pid})"] and pkgproxy.pid(paths) is None
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # our unreaped child
    assert (tmp_path / "images/cache/apt-cacher-ng").is_dir()  # the cache stays
