"""What the fake shell answers to a command: a canned entry of the world (`world["commands"]`),
one of upgrader's own guest commands it models (upgrader/steps/guest.py's templates), or -
anything else - `UnexpectedCall`. Like invoke's MockContext, the fake fails loudly on a call it
was not told about: a fake more lenient than reality hides bugs (a plan `probe:` nobody canned
would silently count as "done already").

A test says what its plan runs with `upgrader.testing.world.expect_plan(world, plan)`."""

from __future__ import annotations

import re
from typing import Any, Sequence

from upgrader.ports import Command
from upgrader.steps.guest import CLAIM_ADDRESS_TEMPLATE, FLUSH_TEMPLATE, IS_MARKED_TEMPLATE


class UnexpectedCall(AssertionError):
    """A fake was asked something no test told it about. An AssertionError, not an UpgraderError:
    the engine must not mistake it for a step failure (hold, abort, roll back quietly) - it
    propagates to the test (through the CLI: an internal error (EXIT_INTERNAL) with a debug log)."""

    def __init__(self, role: str, command: str, patterns: Sequence[str]) -> None:
        self.role, self.command, self.patterns = role, command, list(patterns)
        canned = "\n".join(f"  {p}" for p in self.patterns) or "  (none)"
        super().__init__(
            f"fake shell on {role}: unexpected command `{command}`: it matches no canned entry and is none of "
            f"upgrader's own guest commands; can it in world['commands'] (expect_plan(world, plan) cans the "
            f"plan's own commands). Canned for {role}:\n{canned}")


class UnexpectedForward(AssertionError):
    """The fake shell was asked for a remote forward no test expected (world["expected_forwards"])."""

    def __init__(self, role: str, forward: str, expected: Sequence[Any]) -> None:
        self.role, self.forward = role, forward
        super().__init__(
            f"fake shell on {role}: unexpected remote forward {forward}; a test expects one in "
            f"world['expected_forwards'] (expect_plan(world, plan) adds the plan's staging.packages). "
            f"Expected: {list(expected) or '(none)'}")


# preflight's read-only tests on prod (upgrader/preflight_checks.py TOOLS and its sync path test):
# the fake prod has the sync's tools and every sync path (a test cans rc 1 to take one away)
PREFLIGHT_TESTS = ("command -v rsync", "command -v ssh-keygen || command -v dropbearkey",
                   "command -v ssh || command -v dbclient", "test -d {}")


def exact(text: str) -> str:
    """A `match` regex for exactly this command line (only regex syntax escaped: it stays readable)."""
    return "^" + re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text) + "$"


def canned_for(commands: list[dict[str, Any]], role: str) -> list[str]:
    return [str(e["match"]) for e in commands if e.get("role", role) == role]


def own_command(command: Command, role: str, guest: dict[str, Any]) -> tuple[int, str] | None:
    """(rc, stdout) of one of upgrader's own guest commands, as the fake models it; None if the
    command is none of them."""
    if command.template == IS_MARKED_TEMPLATE:  # the done-marker (mark=) the fake wrote, or not
        return (0 if command.args[-1] in guest["files"] else 1), ""
    if command.template == FLUSH_TEMPLATE and role == "staging":  # before a checkpoint of the twin
        return 0, ""
    if command.template in PREFLIGHT_TESTS and role == "prod":
        return 0, ""
    if command.template == CLAIM_ADDRESS_TEMPLATE and role == "prod":  # ip_move: address + gratuitous ARPs
        interface, _, address, _ = command.args
        return 0, f"{address} on {interface or 'eth0'}\n"
    return None
