"""`upgrader status`, `list`, `show`: read-only views of the state directory."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from upgrader import app
from upgrader.cli.common import app_context
from upgrader.ui import record_json, report, status_table


@click.command()
@click.argument("host", required=False, metavar="[HOST]")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def status(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """The latest run of HOST (or of every host): phase, timings, figures."""
    context, console = app_context(ctx, with_view=False)
    records = app.status(context, host)
    if as_json:
        sys.stdout.write(json.dumps([record_json(r) for r in records], indent=2) + "\n")
        return
    if not records:
        console.print("no runs yet — `upgrader start HOST --plan FILE` starts one")
        return
    if host:
        report(console, records[0])
    else:
        status_table(console, records)


@click.command(name="list")
@click.pass_context
def list_runs(ctx: click.Context) -> None:
    """Every run of every host, oldest first."""
    context, console = app_context(ctx, with_view=False)
    records = app.history(context)
    if not records:
        console.print("no runs yet — `upgrader start HOST --plan FILE` starts one")
        return
    status_table(console, records)


@click.command()
@click.argument("host", metavar="HOST")
@click.option("--json", "as_json", is_flag=True, help="the raw journal lines")
@click.pass_context
def show(ctx: click.Context, host: str, as_json: bool) -> None:
    """HOST's latest run journal: every step begun and done, with its outputs."""
    context, console = app_context(ctx, with_view=False)
    record, entries = app.journal(context, host)
    if as_json:
        for entry in entries:
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
        return
    console.print(f"[bold]{record.host}[/] run {record.run_id} — phase {record.phase.value}; plan {escape(record.plan_path)} (sha256 {record.plan_sha256[:12]}…)")
    for entry in entries:
        kind = str(entry.get("kind"))
        ts = str(entry.get("ts", ""))[11:19]
        if kind == "begin":
            console.print(f"{ts}  [cyan]begin[/] {escape(str(entry.get('key')))}: {escape(str(entry.get('title', '')))}")
        elif kind == "done":
            outputs = json.dumps(entry.get("outputs") or {}, sort_keys=True)
            console.print(f"{ts}  [green]done [/] {escape(str(entry.get('key')))} {escape(outputs[:160])}")
        elif kind == "transition":
            console.print(f"{ts}  [bold]→ {entry.get('dest')}[/] ({entry.get('trigger')})")
        elif kind == "failed":
            console.print(f"{ts}  [red]failed[/] {entry.get('phase')}: {escape(str(entry.get('error')))}")
        else:
            console.print(f"{ts}  {escape(json.dumps(entry, sort_keys=True))}")
