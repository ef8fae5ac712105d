"""Header safety: values that go into mail headers must be single-line text. Rejecting them
here (and building headers with email.headerregistry, never by concatenation) is what stops a
plan value or a template from adding a Bcc: or a second body."""

from __future__ import annotations

import unicodedata
from email.errors import HeaderParseError
from email.headerregistry import Address

from upgrader.errors import InputError

_HINT = "mail header values must be one line without control characters; fix the plan value or the template"


def has_control(value: str) -> bool:
    """CR, LF, TAB and every other control character, and the Unicode line/paragraph separators."""
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value)


def single_line(what: str, value: str) -> str:
    """`value` unchanged, or InputError naming `what` if it could inject a header."""
    if has_control(value):
        raise InputError(f"possible header injection: {what} contains a line break or control character: {value!r}", hint=_HINT)
    if not value.strip():
        raise InputError(f"{what} is empty", hint=_HINT)
    return value


def address(what: str, value: str) -> Address:
    """A bare address (`user@example.org`) as an Address object, or InputError."""
    single_line(what, value)
    try:
        parsed = Address(addr_spec=value)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise InputError(f"{what} is not a mail address: {value!r} ({exc})", hint="use a bare address: user@example.org") from None
    if not parsed.username or not parsed.domain:
        raise InputError(f"{what} is not a mail address: {value!r}", hint="use a bare address: user@example.org")
    return parsed
