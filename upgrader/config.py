"""Layered settings through invoke's Config: built-in defaults < /etc/upgrader.yaml <
~/.upgrader.yaml < UPGRADER_* environment variables (UPGRADER_STATE_DIR=/var/lib/upgrader).
Command-line options override all of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invoke.config import Config

DEFAULTS = {
    "state_dir": "state",
    # machine-wide: a VM is locked here by its UUID whatever state dir or host name a run uses
    "lock_dir": "/run/lock/upgrader",
}


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    lock_dir: Path = Path(DEFAULTS["lock_dir"])


class UpgraderConfig(Config):
    prefix = "upgrader"  # /etc/upgrader.yaml, ~/.upgrader.yaml, UPGRADER_* variables


def load_settings(state_dir: str | None = None) -> Settings:
    config = UpgraderConfig(defaults=dict(DEFAULTS), lazy=True)
    config.load_system()
    config.load_user()
    config.load_shell_env()
    return Settings(state_dir=Path(state_dir or config["state_dir"]), lock_dir=Path(config["lock_dir"]))
