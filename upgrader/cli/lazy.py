"""The command group behind `upgrader`: subcommands imported only when invoked, and the global
options accepted after the subcommand too.

Lazy: `upgrader --help` lists every command from a table (module, attribute, short help) without
importing any of them; `upgrader status` imports only what status needs (docs/benchmarks.md,
start-up). Commands added with `add_command` work as usual (imported eagerly).

Global options after the subcommand: `upgrader status --state-dir X`, `upgrader run-due -q`.
Every subcommand the group hands out (lazy or added, and the commands of a nested group such as
`plan`) gets hidden copies of the group's `--state-dir` and `-q/--quiet` that write into the same
Globals; given after the subcommand they win. A command that declares one of these names itself
keeps its own."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click

from upgrader.cli.common import Globals


@dataclass(frozen=True)
class LazyCommand:
    module: str
    attribute: str
    short_help: str  # what `upgrader --help` shows; a test keeps it equal to the command's own
    optional: bool = False  # a part that may be missing here (the lab): a failed import hides it


def _shortened(text: str, limit: int) -> str:
    """`text` cut to `limit` characters at a word, with "..." (as click shortens a short help)."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 3)].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


def _set_state_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    root = ctx.find_root().obj
    if value is not None and isinstance(root, Globals):
        root.state_dir = value


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    root = ctx.find_root().obj
    if value and isinstance(root, Globals):
        root.quiet = True


def _global_options() -> list[click.Option]:
    return [
        click.Option(["--state-dir"], metavar="DIR", expose_value=False, hidden=True, is_eager=True,
                     callback=_set_state_dir, help="as `upgrader --state-dir DIR COMMAND`"),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, hidden=True, is_eager=True,
                     callback=_set_quiet, help="as `upgrader -q COMMAND`"),
    ]


def accept_global_options(command: click.Command) -> click.Command:
    """Add the hidden global options to `command` (and to a group's commands), once; an option
    whose names the command uses itself is left out for that command."""
    if getattr(command, "_upgrader_globals", False):
        return command
    taken = {name for param in command.params for name in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    for option in _global_options():
        if not taken.intersection(option.opts):
            command.params.append(option)
    command._upgrader_globals = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
    return command


class LazyGroup(click.Group):
    def __init__(self, *args: object, lazy: dict[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.lazy) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in self.lazy:
            entry = self.lazy[cmd_name]
            try:
                module = importlib.import_module(entry.module)
            except ImportError:
                if entry.optional:  # an optional part (the lab) not installed here
                    return None
                raise  # a broken install: an internal error with a debug log, never "no such command"
            command = getattr(module, entry.attribute)
        return accept_global_options(command) if command is not None else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but the short help of a command not yet imported comes from the table."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is not None:
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, _shortened(self.lazy[name].short_help, limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
