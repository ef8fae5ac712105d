"""A ready-made fake scenario for tests and benchmarks: a mail host plan whose upgrade takes
/etc/labos-release from 1 to 2, and the canned command results that make the fakes behave so."""

from __future__ import annotations

import json
from typing import Any

from upgrader.testing.fakes import WorldFile

FAKE_PLAN = """\
version: 1
description: fake mail host for tests
source:
  libvirt_uri: fake://{world}
  domain: mailhost
ssh:
  prod: {{host: 192.0.2.10}}
  staging: {{host: 192.0.2.10}}
staging:
  network: stg-net
upgrade:
  - name: fetch
    run: labos-update fetch
  - name: install-1
    run: labos-update install
    expect:
      - {{prompt: "(y/n)", answer: "y"}}
  - reboot: true
  - name: rebuild
    run: labos-update install
  - reboot: true
validate:
  - name: smtp
    smtp: {{port: 25}}
  - name: release
    command: {{run: cat /etc/labos-release, stdout: "2"}}
    differential: true
sync:
  paths:
    - path: /var/mail/
  quiesce: ["/etc/init.d/smtpd stop"]
  resume: ["/etc/init.d/smtpd start"]
  presync: {{max_passes: 5, until_files: 5, until_bytes: 1MiB}}
takeover:
  strategy: mac_move
  production_network: prod-net
keep_old_for: {keep}
"""

RELEASE_COMMANDS = [  # every command FAKE_PLAN runs (the fake shell raises on any other)
    {"match": r"^labos-update fetch$"},
    {"match": r"labos-update install", "set": {"release": "2"}},
    {"match": r"cat /etc/labos-release", "stdout": "{release}"},
    {"match": r"smtpd stop", "set": {"services": False}},
    {"match": r"smtpd start", "set": {"services": True}},
]


def effects(world: WorldFile, op: str | None = None) -> list[dict[str, Any]]:
    data = json.loads(world.path.read_text())["effects"]
    return [e for e in data if op is None or e["op"] == op]
