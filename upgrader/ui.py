"""Rendering engine events with rich: a live phase list with a spinner on a terminal, plain
lines otherwise (pipes, CI, NO_COLOR honoured by rich itself), and the final report table."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from upgrader.events import (
    Event,
    Held,
    Notice,
    Parked,
    PhaseDone,
    PhaseFailed,
    PhaseStarted,
    RunEnded,
    RunStarted,
    StepBegin,
    StepDone,
    StepInDoubt,
    StepOutput,
    Transition,
)
from upgrader.phases import FORWARD, Phase
from upgrader.step_keys import presync_passes, revert_targets
from upgrader.clock import utcnow
from upgrader.held import HeldView, summary, view_commands
from upgrader.forecast import Forecast
from upgrader.notice_keys import customers_not_told
from upgrader.store import check_dir, secure_open, writing

if TYPE_CHECKING:  # pydantic (the record) and the live display are not imported for the status table
    from rich.live import Live

    from upgrader.app_status import RunStatus
    from upgrader.events import Listener
    from upgrader.record import RunRecord

STYLE = {"done": "green", "failed": "red", "parked": "yellow", "running": "cyan", "skipped": "dim",
         "interrupted": "bold yellow"}


# C0 controls but tab and newline, DEL, C1 controls (CSI/OSC as one byte), bidi overrides/isolates
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_HIDDEN_OR_NEWLINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, CR -> ^M, BEL -> ^G
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def visible(text: str, *, newlines: bool = True) -> str:
    """`text` (guest output, error messages) with every terminal control made visible: escape
    sequences (OSC title/clipboard, CSI erase/cursor), C1 controls, BEL, backspace and carriage
    returns can neither act on the operator's terminal nor overwrite a line. Newlines stay unless
    `newlines` is false (one guest line must stay one line)."""
    return (_HIDDEN if newlines else _HIDDEN_OR_NEWLINE).sub(_shown, text)


def safe(text: object) -> str:
    """visible() and escaped for rich markup: for interpolating into a markup string."""
    return escape(visible(str(text)))


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class RunView:
    """Listener: live on a terminal, line by line elsewhere."""

    def __init__(self, console: Console, verbose: bool = True) -> None:
        self.console = console
        self.verbose = verbose
        self.live: Live | None = None
        self.phase_state: dict[Phase, str] = {}
        self.current: Phase | None = None
        self.current_step = ""
        self.started = time.monotonic()

    # ------------------------------------------------------------------ listener

    def __call__(self, event: Event) -> None:
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)
        if self.live is not None:
            self.live.update(self._render())

    def _on_RunStarted(self, e: RunStarted) -> None:
        verb = "resuming" if e.resumed else "starting"
        self.console.print(f"[bold]{verb} run {e.run_id}[/] for [bold]{escape(e.host)}[/] at phase {e.phase.value}")
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
            self.live.start()

    def _on_PhaseStarted(self, e: PhaseStarted) -> None:
        self.current, self.current_step = e.phase, ""
        self.phase_state[e.phase] = "running"
        if self.live is None:
            self.console.print(f"==> {e.phase.value}")

    def _on_PhaseDone(self, e: PhaseDone) -> None:
        self.phase_state[e.phase] = "done"
        self._line(f"[green]✓[/] {e.phase.value} ({e.seconds:.1f} s)")

    def _on_PhaseFailed(self, e: PhaseFailed) -> None:
        self.phase_state[e.phase] = "failed"
        self._line(f"[red]✗ {e.phase.value} failed:[/] {safe(e.message)}")
        if e.hint:
            self._line(f"  [dim]hint: {safe(e.hint)}[/]")

    def _on_Transition(self, e: Transition) -> None:
        if e.trigger not in ("advance", ""):
            self._line(f"[yellow]→ {e.dest.value}[/] ({safe(e.trigger)})")

    def _on_StepBegin(self, e: StepBegin) -> None:
        self.current_step = visible(e.title, newlines=False)
        if self.live is None:
            self.console.print(f"  - {safe(e.key)}: {safe(self.current_step)}")

    def _on_StepInDoubt(self, e: StepInDoubt) -> None:
        what = "already done (probed), not repeated" if e.already_done else "not done (probed), running it"
        self._line(f"  [yellow]in doubt[/] {safe(e.key)}: {what}")

    def _on_StepDone(self, e: StepDone) -> None:
        if e.reason:  # skipped without ever running: said whatever the verbosity
            self._line(f"  [dim]- {safe(e.key)}: skipped ({safe(e.reason)})[/]")
        elif e.skipped and self.verbose and self.live is None:
            self.console.print(f"  - {safe(e.key)}: done earlier")

    def _on_StepOutput(self, e: StepOutput) -> None:
        if self.verbose:  # remote output is text, never markup
            self.console.print(Text.assemble("    ", (visible(e.key), "dim"), " ", visible(e.line, newlines=False)))

    def _on_Notice(self, e: Notice) -> None:
        color = {"warning": "yellow", "error": "red"}.get(e.level, "blue")
        self._line(f"[{color}]![/] {safe(e.text)}")

    def _on_Parked(self, e: Parked) -> None:
        self.phase_state[e.phase] = "parked"
        self._line(f"[yellow]⏸ parked in {e.phase.value}:[/] {safe(e.reason)}")

    def _on_Held(self, e: Held) -> None:
        self.phase_state[e.phase] = "failed"
        where = e.step or e.phase.value
        self._line(f"[bold yellow]⏸ held at {safe(where)}[/]: the twin is kept on staging for repair, prod is untouched "
                   f"(`upgrader status {safe(e.host)}` says what to run next)")

    def _on_RunEnded(self, e: RunEnded) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (at the run's end, or when it is interrupted: what is printed
        next must not land inside it, or be wiped with it)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    # ------------------------------------------------------------------ drawing

    def _line(self, markup: str) -> None:
        self.console.print(markup)

    def _render(self) -> Group:
        from rich.spinner import Spinner

        rows = []
        for phase in FORWARD:
            state = self.phase_state.get(phase)
            if phase == self.current and state == "running":
                rows.append(Spinner("dots", text=Text.assemble((phase.value, "bold cyan"), ("  " + self.current_step, "dim"))))
            else:
                mark = {"done": "✓", "failed": "✗", "parked": "⏸"}.get(state or "", "·")
                rows.append(Text(f"{mark} {phase.value}", style=STYLE.get(state or "", "dim")))
        return Group(*rows)


def report(console: Console, record: RunRecord, held_view: HeldView | None = None, *, stopped: bool = False) -> None:
    """The final table: phases with durations, and the figures the run produced. `stopped`: no
    process runs it (status of an interrupted run): a `running` phase is shown `interrupted`."""
    table = Table(title=f"run {record.run_id} — {record.host}: {record.phase.value}", title_justify="left")
    table.add_column("phase")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for timing in record.timings:
        seconds = f"{timing.seconds:.1f}" if timing.seconds is not None else "…"
        shown = "interrupted" if stopped and timing.status == "running" else timing.status
        table.add_row(timing.phase.value, Text(shown, style=STYLE.get(shown, "")), seconds if shown == timing.status else "?")
    console.print(table)
    for label, value in figures(record).items():
        console.print(f"  {label}: [bold]{safe(value)}[/]")
    if record.parked:
        console.print(f"[yellow]parked:[/] {safe(record.parked)}")
    if record.phase == Phase.HELD and record.held is not None:
        held_report(console, record, held_view or HeldView(checkpoints=revert_targets(record.outputs)))
        return
    for label, error in (("error", record.error), ("cleanup error", record.cleanup_error)):
        if error is not None:
            console.print(f"[red]{label} in {error.phase.value}:[/] {safe(error.message)}")
            if error.hint:
                console.print(f"[dim]hint: {safe(error.hint)}[/]")
    for warning in record.warnings:
        console.print(f"[bold red]warning:[/] {safe(warning)}")


def held_report(console: Console, record: RunRecord, view: HeldView) -> None:
    """`held at upgrade[4] (portupgrade -af): exited 1, 3h12m ago`, the output tail, what to run next."""
    assert record.held is not None
    held = record.held
    console.print(f"[bold yellow]{safe(summary(held, utcnow()))}[/]")
    if held.command:
        console.print(f"  command: {safe(held.command)}")
    for line in (held.tail or held.message).splitlines()[-10:]:
        console.print(Text.assemble("  │ ", (visible(line, newlines=False), "dim")))
    state, commands = view_commands(record.host, held, view)
    console.print(f"{safe(state)}. Next:")
    for command in commands:
        console.print(f"  {safe(command)}")


def figures(record: RunRecord) -> dict[str, str]:
    out: dict[str, str] = {}
    presync = [v for _, v in presync_passes(record.outputs)]
    if presync:
        out["pre-sync passes"] = str(len(presync))
        found = Forecast.from_outputs(record.output("await_window").get("forecast") or record.output("presync.forecast") or None)
        out["downtime forecast"] = found.describe() if found else f"{presync[-1].get('seconds', 0):.2f} s"
    if customers_not_told(record.outputs):
        out["customers"] = "not told (the announcement could not be sent)"
    back = record.output("cutover.service_back")
    if back.get("downtime") is not None:
        out["observed downtime"] = f"{back['downtime']:.2f} s (quiesce -> service answers at its address)"
    final = record.output("cutover.final_sync")
    if final:
        out["final sync"] = f"{final.get('files', 0)} files, {final.get('bytes', 0)} bytes in {final.get('seconds', 0):.2f} s"
        if final.get("setup_seconds"):  # a resumed or reconnected cutover opened its sync session after the quiesce
            out["final sync"] += f" (+ {final['setup_seconds']:.2f} s setting the sync up inside the window)"
    synced = sum(v.get("files", 0) for v in presync) + final.get("files", 0)
    if presync or final:
        out["files synced"] = str(synced)
    from upgrader.probe_skip import skipped_by_probe  # pydantic: not for the light status path

    probed = [k for k, v in record.outputs.items() if skipped_by_probe(v) is not None]
    if probed:
        out["skipped (probe: already done)"] = ", ".join(probed)
    undefine = record.output("decommission.undefine")
    if undefine:
        out["bytes freed"] = f"{undefine.get('bytes_freed', 0):,}"
    autostart = record.output("decommission.autostart").get("autostart")
    if autostart is not None:
        out["new prod's autostart"] = f"{'on' if autostart else 'off'} (as the old VM's)"
    return out


STATE_STYLE = {"urgent": "bold red", "interrupted": "yellow", "error": "red", "held": "yellow", "parked": "cyan",
               "active": "green", "finished": "dim"}


def status_table(console: Console, statuses: Sequence[RunStatus]) -> None:
    """One row per run; URGENT stands out. Not on a terminal (`list | grep`): plain aligned
    columns, never a cut or wrapped run id."""
    rows = [(visible(s.record.host, newlines=False), s.record.run_id, s.record.phase.value,
             ("URGENT" if s.state.value == "urgent" else s.state.value)
             + (", customers not told" if customers_not_told(s.record.outputs) else ""),
             s.record.updated.isoformat(timespec="seconds"))
            for s in statuses]
    header = ("host", "run", "phase", "state", "updated")
    if console.is_terminal:
        table = Table()
        for column in header:
            table.add_column(column, no_wrap=True)
        for s, row in zip(statuses, rows):
            table.add_row(*row[:3], Text(row[3], style=STATE_STYLE.get(s.state.value, "")), row[4])
        console.print(table)
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            console.print(escape("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()), crop=False)
    for s in statuses:
        if s.state.value in ("urgent", "interrupted") and s.hint and s is _latest(statuses, s.record.host):
            label = "URGENT" if s.state.value == "urgent" else "interrupted"
            console.print(f"[{STATE_STYLE[s.state.value]}]{safe(s.record.host)}: {label}[/] — {safe(s.hint)}")


def _latest(statuses: Sequence[RunStatus], host: str) -> RunStatus:
    return [s for s in statuses if s.record.host == host][-1]


def state_line(console: Console, status: RunStatus) -> None:
    """Under `status HOST`'s report: the state, when it is not plain from the phase."""
    state = status.state.value
    if state in ("urgent", "interrupted", "active", "error"):
        label = "URGENT" if state == "urgent" else state
        console.print(f"[{STATE_STYLE[state]}]{label}:[/] {safe(status.hint or '')}")
    if status.client_hold:
        console.print(f"[bold red]clients held on {safe(status.client_hold)}:[/] new connections are dropped until "
                      f"the cutover or the rollback releases them (`upgrader resume {safe(status.record.host)}`; "
                      "by hand: docs/operations.md, \"Client hold: undoing it by hand\")")


class IdleFilter:
    """Listener wrapper for `run-due`: a run that was resumed only to park again where it was
    (Parked.again) reaches `inner` not at all - no output, no events.jsonl lines - so a cron
    every minute adds nothing while nothing is due. Any other event passes the held-back ones on."""

    QUIET = (RunStarted, PhaseStarted)

    def __init__(self, inner: "Listener") -> None:
        self.inner = inner
        self.held_back: list[Event] | None = None  # None: passing through

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.held_back = []
        if self.held_back is None:
            self.inner(event)
            return
        quiet = isinstance(event, self.QUIET) or (isinstance(event, StepDone) and event.skipped) or (
            isinstance(event, Parked) and event.again)
        if quiet:
            self.held_back.append(event)
        elif isinstance(event, RunEnded) and any(isinstance(e, Parked) for e in self.held_back):
            self.held_back = None  # parked again, nothing else happened: dropped
        else:
            held_back, self.held_back = self.held_back, None
            for e in held_back:
                self.inner(e)
            self.inner(event)


class EventLog:
    """Listener: every event as a JSON line in the run's dir (events.jsonl, 0600, never through a
    symlink), for post-mortems. Cannot open or write it: StateUnwritable/UnsafeState (exit 4)."""

    def __init__(self, state_root: Path) -> None:
        self.root = state_root
        self.handle: IO[str] | None = None
        self.directory: Path | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._open(self.root / event.host / event.run_id)
        if self.handle is not None and self.directory is not None:
            with writing(self.directory):
                self.handle.write(json.dumps({"t": time.time(), **event.to_dict()}, default=str) + "\n")
                self.handle.flush()
        if isinstance(event, RunEnded) and self.handle is not None:
            self.handle.close()
            self.handle = None

    def _open(self, directory: Path) -> None:
        check_dir(directory)
        with writing(directory):
            fd = secure_open(directory / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.handle = os.fdopen(fd, "a", encoding="utf-8")
        self.directory = directory
