"""`upgrader plan check FILE`, `upgrader plan schema`."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from upgrader import app
from upgrader.cli.common import make_console
from upgrader.plan import plan_schema


@click.group()
def plan() -> None:
    """Check plan files and print their JSON Schema."""


@plan.command()
@click.argument("file", metavar="FILE")
def check(file: str) -> None:
    """Validate FILE: exit 0 if it is a valid plan, 2 with file:line:col messages if not (also when its
    window has no occurrence left, or an SSH key or known_hosts file it names is missing)."""
    path, parsed = app.load(file, files=True)
    console = make_console()
    console.print(f"[green]ok[/] {escape(str(path))}: {parsed.source.domain} at {escape(parsed.source.libvirt_uri)}, "
                  f"{len(parsed.upgrade)} upgrade step(s), {len(parsed.validate)} check(s), takeover {parsed.takeover.strategy}")
    if parsed.staging.packages is not None:
        console.print(f"packages: {escape(parsed.staging.packages.describe())}")


@plan.command()
def schema() -> None:
    """Print the plan's JSON Schema (for editors: yaml-language-server)."""
    sys.stdout.write(json.dumps(plan_schema(), indent=2) + "\n")
