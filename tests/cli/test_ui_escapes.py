"""Guest output and error text cannot drive the operator's terminal (review finding 17): escape
sequences, C1 controls, BEL, backspace and carriage returns are shown, not obeyed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from upgrader.cli.common import fail
from upgrader.errors import StepFailed
from upgrader.events import Notice, PhaseFailed, PhaseStarted, RunStarted, StepBegin, StepOutput
from upgrader.phases import Phase
from upgrader.record import RunError, RunRecord
from upgrader.ui import RunView, report, visible

OSC_TITLE = "\x1b]0;pwned title\x07"
OSC_CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsfHNo\x07"
CSI_CLEAR = "\x1b[2J\x1b[H"
FORGED = "downloading 10%\r✓ cutover (0.1 s)"
C1_CSI = "\x9b2J"
HOSTILE = [OSC_TITLE, OSC_CLIPBOARD, CSI_CLEAR, FORGED, C1_CSI, "bell\x07", "back\x08\x08ed", "rlo\u202eevil"]
RAW = ("\x1b", "\x07", "\r", "\x08", "\x9b", "\u202e")


def assert_defused(out: str, *, live: bool = False) -> None:
    """No hostile control in `out`; with `live`, rich's own cursor work (CR, CSI nA/2K) is allowed."""
    for raw in ("\x1b]", "\x1b[2J", "\r" if not live else "\r✓", "\x07", "\x08", "\x9b", "\u202e"):
        assert raw not in out, (raw, out)


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
def test_visible_defuses(text: str) -> None:
    shown = visible(text)
    assert not any(c in shown for c in RAW), repr(shown)


def test_visible_renders_controls_readably() -> None:
    assert visible(OSC_TITLE) == "^[]0;pwned title^G"
    assert visible(CSI_CLEAR) == "^[[2J^[[H"
    assert visible(FORGED) == "downloading 10%^M✓ cutover (0.1 s)"
    assert visible(C1_CSI) == "<U+009B>2J"
    assert visible("a\tb\nc") == "a\tb\nc"
    assert visible("a\nb", newlines=False) == "a^Jb"
    assert visible("tschüß 日本") == "tschüß 日本"


def events() -> list[object]:
    return [
        RunStarted("mailhost", "20261124T201500Z-3f9a", Phase.UPGRADE, False),
        PhaseStarted(Phase.UPGRADE),
        StepBegin("upgrade[1]", "step " + OSC_TITLE),
        *[StepOutput("upgrade[1]", line) for line in HOSTILE],
        StepOutput("upgrade[1]", "two\nlines"),
        Notice("notice " + CSI_CLEAR, "warning"),
        PhaseFailed(Phase.UPGRADE, "failed " + OSC_CLIPBOARD, "hint " + FORGED),
    ]


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_run_view_defuses_guest_output(terminal: bool) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200, color_system=None if not terminal else "standard")
    view = RunView(console, verbose=True)
    for event in events():
        view(event)  # type: ignore[arg-type]
    if view.live is not None:
        view.live.stop()
    out = buf.getvalue()
    assert_defused(out, live=terminal)
    assert "^[]0;pwned title^G" in out and "^[]52;c;" in out and "downloading 10%^M✓ cutover" in out
    assert "two^Jlines" in out  # one guest line cannot start a fresh, unprefixed line of ours


def test_report_and_fail_defuse(capsys: pytest.CaptureFixture[str]) -> None:
    buf = io.StringIO()
    record = RunRecord(run_id="20261124T201500Z-3f9a", host="mailhost", plan_path="p", plan_sha256="ab" * 32,
                       phase=Phase.ABORTED, parked="why " + CSI_CLEAR,
                       error=RunError(phase=Phase.UPGRADE, message="exited 1: " + OSC_TITLE, hint=FORGED))
    report(Console(file=buf, width=200), record)
    assert_defused(buf.getvalue())
    assert "^[]0;pwned title" in buf.getvalue()

    with pytest.raises(SystemExit):
        fail(StepFailed("`make` exited 2: " + OSC_CLIPBOARD + "[red]x[/]", hint=FORGED))
    err = capsys.readouterr().err
    assert_defused(err)
    assert "^[]52;c;" in err and "[red]x[/]" in err  # shown as typed: neither obeyed nor markup
