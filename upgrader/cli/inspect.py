"""`upgrader status`, `list`, `show`: read-only views of the state directory."""

from __future__ import annotations

import json
import sys

import click

from upgrader.cli.common import app_context, read_context
from upgrader.phases import Phase
from upgrader.ui import report, safe, state_line, status_table

JSON_HELP = "machine-readable: {\"schema\": \"upgrader.status/1\", \"runs\": [...]} (docs/json-schema.md)"


@click.command()
@click.argument("host", required=False, metavar="[HOST]")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def status(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """The latest run of HOST (or of every host): state, phase, timings, figures.

    \b
    state: active (a process runs it), parked, held, interrupted (its process died or was
    stopped: `upgrader resume HOST`), URGENT (interrupted inside the cutover: prod may be down),
    error (a cleanup step failed), finished."""
    if host is None and not as_json:  # the table: read without the app or pydantic, at once
        from upgrader.app_status import light_states

        store, console = read_context(ctx)
        rows = light_states(store)
        if rows:
            status_table(console, rows)
        else:
            console.print("no runs yet — `upgrader start HOST --plan FILE` starts one")
        return
    from upgrader import app, app_status
    from upgrader.status_json import status_document

    context, console = app_context(ctx, with_view=False)
    statuses = app_status.states(context, host)
    if as_json:
        sys.stdout.write(json.dumps(status_document(statuses), indent=2) + "\n")
        return
    if not statuses:
        console.print("no runs yet — `upgrader start HOST --plan FILE` starts one")
        return
    if host:
        record, state = statuses[0].record, statuses[0].state.value
        report(console, record, app.held_view(context, record) if record.phase == Phase.HELD else None,
               stopped=state in ("interrupted", "urgent"))
        state_line(console, statuses[0])
    else:
        status_table(console, statuses)


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def list_runs(ctx: click.Context, as_json: bool) -> None:
    """Every run of every host, oldest first."""
    from upgrader import app_status
    from upgrader.status_json import status_document

    context, console = app_context(ctx, with_view=False)
    statuses = app_status.history_states(context)
    if as_json:
        sys.stdout.write(json.dumps(status_document(statuses), indent=2) + "\n")
        return
    if not statuses:
        console.print("no runs yet — `upgrader start HOST --plan FILE` starts one")
        return
    status_table(console, statuses)


@click.command()
@click.argument("host", metavar="HOST")
@click.option("--json", "as_json", is_flag=True, help="the raw journal lines")
@click.pass_context
def show(ctx: click.Context, host: str, as_json: bool) -> None:
    """HOST's latest run journal: every step begun and done, with its outputs."""
    from upgrader import app

    context, console = app_context(ctx, with_view=False)
    record, entries = app.journal(context, host)
    if as_json:
        for entry in entries:
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
        return
    console.print(f"[bold]{record.host}[/] run {record.run_id} — phase {record.phase.value}; plan {safe(record.plan_path)} (sha256 {safe(record.plan_sha256[:12])}…)")
    for entry in entries:
        console.print(_journal_line(entry))


def _journal_line(entry: dict[str, object]) -> str:
    """One journal entry as a markup line; every value from the file is made visible and escaped
    (guest output in errors must not drive the terminal)."""
    kind = str(entry.get("kind"))
    ts = safe(str(entry.get("ts", ""))[11:19])
    if kind == "begin":
        return f"{ts}  [cyan]begin[/] {safe(entry.get('key'))}: {safe(entry.get('title', ''))}"
    if kind == "done":
        outputs = json.dumps(entry.get("outputs") or {}, sort_keys=True)
        return f"{ts}  [green]done [/] {safe(entry.get('key'))} {safe(outputs[:160])}"
    if kind == "transition":
        return f"{ts}  [bold]→ {safe(entry.get('dest'))}[/] ({safe(entry.get('trigger'))})"
    if kind == "failed":
        return f"{ts}  [red]failed[/] {safe(entry.get('phase'))}: {safe(entry.get('error'))}"
    return f"{ts}  {safe(json.dumps(entry, sort_keys=True))}"
