"""Layered settings through invoke's Config: built-in defaults < /etc/upgrader.yaml <
~/.upgrader.yaml < UPGRADER_* environment variables (UPGRADER_STATE_DIR=/var/lib/upgrader).
Command-line options override all of them.

invoke (with its vendored YAML) takes a tenth of a second to import: it is imported only when one
of the files exists. Without one the layers are the defaults and the environment, read the way
invoke reads them (UPGRADER_<KEY> for the known keys)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "state_dir": "state",
    # machine-wide: a VM is locked here by its UUID whatever state dir or host name a run uses
    "lock_dir": "/run/lock/upgrader",
}


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    lock_dir: Path = Path(DEFAULTS["lock_dir"])


PREFIX = "upgrader"  # /etc/upgrader.yaml, ~/.upgrader.yaml, UPGRADER_* variables
_SUFFIXES = ("yaml", "yml", "json", "py")  # what invoke's Config looks for


def config_files() -> list[Path]:
    """The settings files invoke's Config would load (system, then user), those that exist."""
    candidates = [Path(f"/etc/{PREFIX}.{suffix}") for suffix in _SUFFIXES]
    candidates += [Path(f"~/.{PREFIX}.{suffix}").expanduser() for suffix in _SUFFIXES]
    return [path for path in candidates if path.exists()]


def _with_invoke() -> dict[str, str]:
    from invoke.config import Config

    class UpgraderConfig(Config):
        prefix = PREFIX

    config = UpgraderConfig(defaults=dict(DEFAULTS), lazy=True)
    config.load_system()
    config.load_user()
    config.load_shell_env()
    return {key: config[key] for key in DEFAULTS}


def load_settings(state_dir: str | None = None) -> Settings:
    if config_files():
        values = _with_invoke()
    else:
        values = {key: os.environ.get(f"{PREFIX.upper()}_{key.upper()}", default) for key, default in DEFAULTS.items()}
    return Settings(state_dir=Path(state_dir or values["state_dir"]), lock_dir=Path(values["lock_dir"]))
