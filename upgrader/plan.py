"""Plan files: load, validate and describe the YAML that tells upgrader how to upgrade one pet VM.

    plan = load_plan("playbooks/freebsd7.yml")     # -> Plan, or PlanError listing every problem

Every problem is reported as one line `file:line:col: key.path[i].key: what is wrong`, pointing
at the offending value (or the key, for an unknown key; or the enclosing mapping, for a missing
one). A user's mistake never produces a traceback: YAML syntax errors, duplicate keys, aliases
(refused outright, so "billion laughs" cannot happen), bad encodings, empty or huge files all
become a PlanError.

Loading runs in three steps:
1. `_compose`: YAML text -> node tree (SafeLoader subclass: no aliases, no YAML 1.1 base-60
   numbers), then a walk over the nodes that records the position of every value and key by key
   path, and rejects duplicate / non-string / merge keys.
2. The node tree is constructed into plain data and validated by the pydantic models below
   (strict scalars: `reboot: "yes"` is an error, `port: "22"` is an error).
3. pydantic errors are translated into the one-line form above (`_translate`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import types
import warnings
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from upgrader.step_keys import upgrade_index
from upgrader.durations import (
    BYTESIZE_HELP,
    BYTESIZE_PATTERN,
    DURATION_HELP,
    DURATION_PATTERN,
    format_duration,
    parse_bytesize,
    parse_duration,
)
from upgrader.errors import InputError, PlanError
from upgrader.plan_ansible import AnsiblePlaybook
from upgrader.plan_packages import PackageProxy
from upgrader.plan_checks import (PlanCheckError, check_env_name, check_operator, check_sync_paths, check_webhook_url,
                                  lone_surrogates, normalise_sync_path, printable, rrule_problem, window_problem)
from upgrader.plan_hold import check_hold, default_ports

__all__ = [
    "MAX_PLAN_BYTES",
    "AnsiblePlaybook",
    "AnsibleStep",
    "Announce",
    "ByteSize",
    "Check",
    "CommandCheck",
    "Duration",
    "HttpCheck",
    "Operator",
    "OperatorWebhook",
    "PackageProxy",
    "Plan",
    "PresyncPolicy",
    "Prompt",
    "RebootStep",
    "RunStep",
    "SmtpCheck",
    "Source",
    "SshAccess",
    "SshTarget",
    "Staging",
    "Sync",
    "SyncPath",
    "Takeover",
    "TcpCheck",
    "UpgradeStep",
    "Weekly",
    "Window",
    "load_plan",
    "parse_plan",
    "plan_digest",
    "plan_schema",
    "resolve_plan_path",
]

MAX_PLAN_BYTES = 1024 * 1024

# --------------------------------------------------------------------------------------------
# Describing values in messages
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """How a YAML value reads in an error message: `"yes please"`, `70000`, `true`, `a list`."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"  # repr() refuses ints over 4300 digits
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime):
        return f"the date {value.isoformat()}"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, timedelta):
        return format_duration(value)
    return f"a {type(value).__name__}"


def _fail(message: str, *, at: tuple[str | int, ...] = (), **ctx: Any) -> PydanticCustomError:
    """A plan error raised from a validator. `at` is a key path below the value being validated
    (e.g. ("address",)) that the error should point to."""
    return PydanticCustomError("plan", message, {**ctx, "at": at} if at else ctx or None)


# --------------------------------------------------------------------------------------------
# Custom scalar types
# --------------------------------------------------------------------------------------------


def _duration_schema(what: str, *, minimum: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "integer", "minimum": minimum}],
            "description": what + ': seconds as an integer, or "90s", "15m", "2h", "7d", "1w", "1h30m"',
        }
    )


def _validate_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError:
        raise _fail(DURATION_HELP + ", got {got}", got=_describe(value)) from None


def _validate_bytesize(value: object) -> int:
    try:
        return parse_bytesize(value)
    except ValueError:
        raise _fail(BYTESIZE_HELP + ", got {got}", got=_describe(value)) from None


Duration = Annotated[
    timedelta,
    PlainValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    _duration_schema("a duration", minimum=0),
]
"""A duration: int seconds or "90s" / "15m" / "2h" / "7d" / "1w" / "1h30m" -> timedelta."""

ByteSize = Annotated[
    int,
    PlainValidator(_validate_bytesize),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": BYTESIZE_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": 'a size: bytes as an integer, or "500k", "16MiB", "1GiB" (k/M/G = KiB/MiB/GiB, kB/MB/GB = decimal)',
        }
    ),
]
"""A size: int bytes or "500k" / "16MiB" / "1GiB" -> int bytes."""


def _checked(check: Any) -> Any:
    """A plan_checks function as a validator: its PlanCheckError becomes a plan problem."""

    def run(value: Any) -> Any:
        try:
            return check(value)
        except PlanCheckError as exc:
            raise _fail("{why}", at=exc.at, why=exc.message) from None

    return run


def _check_positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise _fail("must be longer than 0s, got {got}", got=_describe(value))
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_check_positive), _duration_schema("a duration longer than 0", minimum=1)]
"""A Duration that must be > 0 (timeouts, window lengths)."""


def _int_range(lo: int, hi: int | None = None) -> Any:
    def check(value: int) -> int:
        if value < lo or (hi is not None and value > hi):
            if hi is None:
                raise _fail("must be at least {lo}, got {got}", lo=lo, got=value)
            raise _fail("must be between {lo} and {hi}, got {got}", lo=lo, hi=hi, got=value)
        return value

    bounds: dict[str, int] = {"minimum": lo}
    if hi is not None:
        bounds["maximum"] = hi
    return Annotated[StrictInt, AfterValidator(check), Field(json_schema_extra=bounds)]  # type: ignore[arg-type]


Port = _int_range(1, 65535)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail("not a valid regular expression ({why}): {got}", why=str(exc), got=_describe(value)) from None
    return value


Regex = Annotated[StrictStr, AfterValidator(_check_regex), Field(json_schema_extra={"format": "regex"})]


def _check_absolute(value: str) -> str:
    if not value.startswith("/"):
        raise _fail("must be an absolute path (starting with /), got {got}", got=_describe(value))
    return value


AbsPath = Annotated[StrictStr, AfterValidator(_check_absolute)]


def _check_nonempty(value: str) -> str:
    if not value.strip():
        raise _fail("must not be empty")
    return value


NonEmptyStr = Annotated[StrictStr, AfterValidator(_check_nonempty)]


def _check_single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise _fail("must not contain line breaks (CR/LF): they would inject mail headers")
    return value


SingleLine = Annotated[StrictStr, AfterValidator(_check_single_line)]

_EMAIL_RE = re.compile(r"^[^@\s<>\",;]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]+$")


def _check_email(value: str) -> str:
    _check_single_line(value)
    if not _EMAIL_RE.match(value):
        raise _fail("expected an email address like ops@example.org, got {got}", got=_describe(value))
    return value


Email = Annotated[StrictStr, AfterValidator(_check_email), Field(json_schema_extra={"format": "email"})]

# Datetimes: YAML turns `2024-06-01 03:00:00` into a datetime by itself; a quoted ISO string is
# fine too, so these are the only lax fields.
LaxDatetime = Annotated[datetime, Field(strict=False)]

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=False)


class Source(_Model):
    """The production VM to upgrade, as libvirt knows it."""

    libvirt_uri: NonEmptyStr = Field(
        description='libvirt connection URI: "qemu:///system", "qemu+ssh://hv/system", or "fake:///abs/path/world.json" (tests)'
    )
    domain: NonEmptyStr = Field(description="libvirt domain name of the production VM")
    disk_dir: StrictStr | None = Field(
        default=None,
        description="directory for snapshot overlays and the twin's disks (default: next to the VM's disks)",
    )


class SshTarget(_Model):
    """How to reach one VM over SSH."""

    host: NonEmptyStr = Field(description="host name or address")
    port: Port = Field(default=22, description="SSH port (1..65535)")
    user: NonEmptyStr = Field(default="root", description="login user (needs root rights for the upgrade)")
    key: StrictStr | None = Field(
        default=None, description="private key file; a relative path is relative to the plan file"
    )
    known_hosts: StrictStr | None = Field(
        default=None, description="known_hosts file to check the host key against; relative to the plan file"
    )
    proxy_command: StrictStr | None = Field(
        default=None, description='OpenSSH ProxyCommand, e.g. "ssh -W %h:%p jump.example.org"'
    )
    connect_timeout: PositiveDuration = Field(default=timedelta(seconds=10), json_schema_extra={"default": "10s"}, description="give up connecting after this long")


class SshAccess(_Model):
    """SSH access to production and to the twin on the staging segment."""

    prod: SshTarget = Field(description="the production VM")
    staging: SshTarget = Field(description="the twin, reachable on the isolated staging segment")


class Staging(_Model):
    """Where the twin runs while it is upgraded and validated."""

    network: NonEmptyStr = Field(description="libvirt network or bridge of the isolated staging segment")
    twin_name: NonEmptyStr = Field(
        default="{domain}-twin", description='libvirt name of the twin; "{domain}" is replaced by source.domain'
    )
    packages: PackageProxy | None = Field(
        default=None,
        description="the package proxy the isolated twin may reach, forwarded over upgrader's SSH connection "
        "(docs/packages.md); none: the twin reaches nothing",
    )

    @model_validator(mode="after")
    def _twin_name_template(self) -> Staging:
        try:
            self.twin_name.format(domain="x")
        except (KeyError, IndexError, ValueError):
            raise _fail(
                'only "{placeholder}" may appear in braces, got {got}',
                at=("twin_name",),
                placeholder="{domain}",
                got=_describe(self.twin_name),
            ) from None
        return self


class Prompt(_Model):
    """An interactive prompt of a step's command and the answer to type."""

    prompt: Regex = Field(description="regular expression matched against the command's output")
    answer: StrictStr = Field(description="text sent when the prompt appears (a newline is added)")


class RunStep(_Model):
    """Run a shell command on the twin."""

    name: StrictStr | None = Field(default=None, description="label shown in progress output and the journal")
    run: NonEmptyStr = Field(description="shell command run as the SSH user on the twin")
    expect: list[Prompt] = Field(default=[], description="prompts to answer while the command runs")
    timeout: PositiveDuration = Field(default=timedelta(hours=1), json_schema_extra={"default": "1h"}, description="fail the step after this long")
    probe: StrictStr | None = Field(
        default=None,
        description="command run on the twin before the step: exit status 0 means the step is already done "
        "(it is then skipped, journaled as skipped by its probe); also asked, after the done-marker, for a step "
        "a crash left half-done and for a held run's failed step on `retry`",
    )
    env: dict[StrictStr, StrictStr] = Field(default={}, description="extra environment variables for the command")
    on_failure: Literal["hold", "abort"] | None = Field(
        default=None, description="overrides the plan's `on_failure` for this step"
    )
    checkpoint: StrictBool = Field(
        default=False, description="take a disk checkpoint of the twin before this step (`upgrader revert` goes back to it)"
    )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.run.strip().splitlines()[0]


class RebootStep(_Model):
    """Reboot the twin and wait until SSH answers again."""

    name: StrictStr | None = Field(default=None, description="label shown in progress output and the journal")
    reboot: StrictBool = Field(description="must be true")
    timeout: PositiveDuration = Field(default=timedelta(minutes=10), json_schema_extra={"default": "10m"}, description="fail if the twin is not back after this long")
    on_failure: Literal["hold", "abort"] | None = Field(
        default=None, description="overrides the plan's `on_failure` for this step"
    )
    checkpoint: StrictBool = Field(
        default=False, description="take a disk checkpoint of the twin before this step (`upgrader revert` goes back to it)"
    )

    @model_validator(mode="after")
    def _reboot_true(self) -> RebootStep:
        if not self.reboot:
            raise _fail("reboot: false does nothing; remove the step", at=("reboot",))
        return self

    @property
    def label(self) -> str:
        return self.name or "reboot"


class AnsibleStep(_Model):
    """Run an Ansible playbook against the twin over the plan's pinned SSH path to it (ssh.staging).
    A failed play fails the step like a failed `run` (held for repair); `upgrader retry`, and a
    resume after a crash while it ran, run the whole playbook again: playbooks are idempotent."""

    name: StrictStr | None = Field(default=None, description="label shown in progress output and the journal")
    ansible: AnsiblePlaybook = Field(description="the playbook and how to run it")
    timeout: PositiveDuration = Field(default=timedelta(hours=2), json_schema_extra={"default": "2h"},
                                      description="stop the playbook and fail the step after this long")
    on_failure: Literal["hold", "abort"] | None = Field(
        default=None, description="overrides the plan's `on_failure` for this step"
    )
    checkpoint: StrictBool = Field(
        default=False, description="take a disk checkpoint of the twin before this step (`upgrader revert` goes back to it)"
    )

    @property
    def label(self) -> str:
        return self.name or f"ansible-playbook {self.ansible.playbook}"


_STEP_KINDS = ("run", "reboot", "ansible")
_STEP_TAGS = {"#run": RunStep, "#reboot": RebootStep, "#ansible": AnsibleStep}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [k for k in _STEP_KINDS if k in value]
        return f"#{kinds[0]}" if len(kinds) == 1 else None
    for tag, model in _STEP_TAGS.items():
        if isinstance(value, model):
            return tag
    return None


UpgradeStep = Annotated[
    Union[Annotated[RunStep, Tag("#run")], Annotated[RebootStep, Tag("#reboot")],  # noqa: UP007
          Annotated[AnsibleStep, Tag("#ansible")]],
    Discriminator(_step_kind, custom_error_type="step_kind", custom_error_message="bad upgrade step"),
]


class TcpCheck(_Model):
    """A TCP port accepts connections."""

    port: Port = Field(description="port to connect to")
    host: StrictStr | None = Field(default=None, description="host to connect to (default: the VM being checked)")


class SmtpCheck(_Model):
    """An SMTP server greets with the expected banner."""

    port: Port = Field(default=25, description="SMTP port")
    host: StrictStr | None = Field(default=None, description="host to connect to (default: the VM being checked)")
    banner: Regex = Field(default="^220", description="regular expression the greeting must match")


class ImapCheck(_Model):
    """An IMAP server greets with the expected banner (the client then logs out)."""

    port: Port = Field(default=143, description="IMAP port")
    host: StrictStr | None = Field(default=None, description="host to connect to (default: the VM being checked)")
    banner: Regex = Field(default=r"^\* OK", description="regular expression the greeting must match")


class HttpCheck(_Model):
    """An HTTP GET answers with the expected status (and body)."""

    port: Port = Field(default=80, description="HTTP port")
    host: StrictStr | None = Field(default=None, description="host to connect to (default: the VM being checked)")
    path: StrictStr = Field(default="/", description="path to request")
    status: _int_range(100, 599) = Field(default=200, description="expected HTTP status")  # type: ignore[valid-type]
    body: Regex | None = Field(default=None, description="regular expression the body must match")


class CommandCheck(_Model):
    """A command on the VM exits with the expected status (and prints the expected output)."""

    run: NonEmptyStr = Field(description="shell command run on the VM being checked")
    exit: _int_range(0, 255) = Field(default=0, description="expected exit status")  # type: ignore[valid-type]
    stdout: Regex | None = Field(default=None, description="regular expression stdout must match")


_CHECK_KINDS = ("tcp", "smtp", "imap", "http", "command")


class Check(_Model):
    """One check; exactly one of tcp, smtp, imap, http, command."""

    name: NonEmptyStr = Field(description="unique name of the check (shown in reports)")
    differential: StrictBool = Field(
        default=False,
        description="compare the result on the twin with the result on production instead of requiring success",
    )
    timeout: PositiveDuration = Field(default=timedelta(seconds=30), json_schema_extra={"default": "30s"}, description="fail the check after this long")
    tcp: TcpCheck | None = Field(default=None, description="TCP connect check")
    smtp: SmtpCheck | None = Field(default=None, description="SMTP banner check")
    imap: ImapCheck | None = Field(default=None, description="IMAP banner check")
    http: HttpCheck | None = Field(default=None, description="HTTP request check")
    command: CommandCheck | None = Field(default=None, description="command check")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            present = [k for k in _CHECK_KINDS if k in data]
            if any(data[k] is None for k in present):  # `smtp:` alone means "all defaults"
                data = {k: ({} if k in present and v is None else v) for k, v in data.items()}
            if not present:
                raise _fail('a check needs one of "tcp", "smtp", "imap", "http", "command"')
            if len(present) > 1:
                raise _fail(
                    'a check has exactly one of "tcp", "smtp", "imap", "http", "command"; this one also has "{first}"',
                    at=(present[1],),
                    first=present[0],
                )
        return data

    @property
    def kind(self) -> Literal["tcp", "smtp", "imap", "http", "command"]:
        for k in _CHECK_KINDS:
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated Check without a kind")

    @property
    def spec(self) -> TcpCheck | SmtpCheck | ImapCheck | HttpCheck | CommandCheck:
        """The kind-specific part (self.tcp / self.smtp / ...)."""
        return getattr(self, self.kind)  # type: ignore[no-any-return]


def _unique_check_names(checks: list[Check] | None) -> list[Check] | None:
    seen: dict[str, int] = {}
    for i, check in enumerate(checks or []):
        if check.name in seen:
            raise _fail(
                "duplicate check name {got} (also item {first})",
                at=(i, "name"),
                got=_describe(check.name),
                first=seen[check.name],
            )
        seen[check.name] = i
    return checks


Checks = Annotated[list[Check], AfterValidator(_unique_check_names)]


class SyncPath(_Model):
    """A directory tree copied from production to the twin."""

    path: Annotated[AbsPath, AfterValidator(_checked(normalise_sync_path))] = Field(
        description="absolute path on production (a trailing / syncs the directory's contents); `//` and `.` are "
        "collapsed; `..` and control characters are refused, and so are spaces, shell metacharacters and whole "
        "system directories unless `allow_dangerous_paths`"
    )
    exclude: list[StrictStr] = Field(default=[], description="rsync exclude patterns")


class PresyncPolicy(_Model):
    """Copy repeatedly while production runs, until little enough changes between passes."""

    max_passes: _int_range(1, 50) = Field(default=5, description="at most this many passes before quiescing")  # type: ignore[valid-type]
    until_files: _int_range(0) = Field(default=100, description="stop when a pass changed at most this many files")  # type: ignore[valid-type]
    until_bytes: ByteSize = Field(default=16 * 1024 * 1024, json_schema_extra={"default": "16MiB"}, description="... and at most this many bytes")


class Sync(_Model):
    """Which data moves from production to the twin, and how writers are stopped for the final pass."""

    paths: Annotated[list[SyncPath], Field(min_length=1)] = Field(description="directory trees to copy")
    quiesce: list[StrictStr] = Field(
        default=[],
        description="commands that stop writers on production before the final sync. Contract: they return only "
        "when the service no longer accepts or writes; connections in progress are finished or cut (a mail "
        "acknowledged before they return is on disk, none after). A stop that returns while workers still run "
        "can lose what they write after the final sync (docs/operations.md, Quiescing)",
    )
    resume: list[StrictStr] = Field(
        default=[],
        description="commands that start services on the new production (and on the old VM on rollback)",
    )
    presync: PresyncPolicy = Field(default_factory=PresyncPolicy, description="repeated copies before quiescing")
    allow_dangerous_paths: StrictBool = Field(
        default=False,
        description="allow whole system directories (/, /usr, /var, /etc, ...), nested paths, and spaces or shell "
        "metacharacters in `paths` (production needs rsync 3.2.4 or later for those)",
    )

    @model_validator(mode="after")
    def _paths_are_safe(self) -> Sync:
        _checked(lambda paths: check_sync_paths(paths, allow_dangerous=self.allow_dangerous_paths))(
            [p.path for p in self.paths]
        )
        return self


class Takeover(_Model):
    """How the twin becomes production."""

    strategy: Literal["mac_move", "ip_move"] = Field(
        default="mac_move",
        description="mac_move: the twin takes production's MAC on the production network; "
        "ip_move: the twin configures production's address and announces it by gratuitous ARP",
    )
    production_network: NonEmptyStr = Field(description="libvirt network or bridge of production")
    address: StrictStr | None = Field(
        default=None, description='production address with prefix, e.g. "192.0.2.10/24" (required for ip_move)'
    )
    interface: StrictStr | None = Field(default=None, description="guest interface for ip_move (default: the first)")
    garp_count: _int_range(0, 100) = Field(default=5, description="gratuitous ARPs sent after the move")  # type: ignore[valid-type]
    hold: list[Port] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="TCP ports whose new connections are held (SYN dropped on the hypervisor, clients retransmit) "
        "from just before the quiesce until the new prod answers; default: the ports of the verify checks "
        "without `host:` (not prod's SSH port); [] turns the hold off",
    )

    @model_validator(mode="after")
    def _address(self) -> Takeover:
        if self.address is not None:
            try:
                ipaddress.ip_interface(self.address)
            except ValueError:
                raise _fail(
                    "expected an address with prefix like 192.0.2.10/24, got {got}",
                    at=("address",),
                    got=_describe(self.address),
                ) from None
            if "/" not in self.address:
                raise _fail(
                    "add the prefix length, like 192.0.2.10/24, got {got}", at=("address",), got=_describe(self.address)
                )
        elif self.strategy == "ip_move":
            raise _fail('required when strategy is "ip_move"', at=("address",))
        return self


_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _check_hhmm(value: str) -> str:
    if not _HHMM_RE.match(value):
        raise _fail('expected a time like "03:30" (24-hour HH:MM), got {got}', got=_describe(value))
    return value


class Weekly(_Model):
    """Every week at the same time."""

    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = Field(description="day of the week")
    time: Annotated[StrictStr, AfterValidator(_check_hhmm)] = Field(
        description='start time "HH:MM" (quote it) in the window\'s time zone'
    )


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise _fail(
            'unknown time zone {got} (expected an IANA name like "Europe/Berlin" or "UTC")', got=_describe(value)
        ) from None
    return value


def _check_rrule(value: str) -> str:
    try:
        from dateutil.rrule import rrulestr
    except ImportError:  # pragma: no cover - python-dateutil is a dependency
        return value
    text = value.strip()
    try:
        rrulestr(text if text.upper().startswith(("RRULE:", "DTSTART")) else "RRULE:" + text)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise _fail("not a valid RFC 5545 RRULE ({why}): {got}", why=str(exc), got=_describe(value)) from None
    return value


class Window(_Model):
    """When the cutover may happen. Exactly one of start, weekly, rrule."""

    timezone: Annotated[StrictStr, AfterValidator(_check_timezone)] = Field(
        default="UTC", description="IANA time zone the times are in"
    )
    duration: PositiveDuration = Field(description="how long the window stays open (at least 90s: the shortest cutover with its margin)")
    start: LaxDatetime | None = Field(default=None, description="one absolute window start (ISO 8601)")
    weekly: Weekly | None = Field(default=None, description="a weekly window")
    rrule: StrictStr | None = Field(
        default=None, description='RFC 5545 recurrence rule, e.g. "FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3;BYMINUTE=0"'
    )
    not_before: LaxDatetime | None = Field(default=None, description="no window before this date")
    lead_time: Duration = Field(default=timedelta(0), json_schema_extra={"default": "0s"}, description="customers must be told at least this long before the window opens; windows sooner than that are skipped")

    @model_validator(mode="after")
    def _one_schedule(self) -> Window:
        present = [k for k in ("start", "weekly", "rrule") if getattr(self, k) is not None]
        if not present:
            raise _fail('a window needs one of "start", "weekly", "rrule"')
        if len(present) > 1:
            raise _fail(
                'a window has exactly one of "start", "weekly", "rrule"; this one also has "{first}"',
                at=(present[1],),
                first=present[0],
            )
        if self.rrule is not None:
            try:
                _check_rrule(self.rrule)
            except PydanticCustomError as exc:
                raise _fail(exc.message(), at=("rrule",)) from None
            if (problem := rrule_problem(self.rrule, self.timezone)) is not None:
                raise _fail("{why}", at=("rrule",), why=problem)
        return self


class Announce(_Model):
    """Mail the users before the cutover."""

    sender: Email = Field(description="From: address")
    to: Annotated[list[Email], Field(min_length=1)] = Field(description="recipients")
    subject: SingleLine | None = Field(default=None, description="subject (default: generated from the template)")
    template_dir: StrictStr | None = Field(
        default=None, description="directory with the mail templates; relative to the plan file"
    )
    reminder_before: Duration = Field(
        default=timedelta(hours=24), json_schema_extra={"default": "24h"}, description="send a reminder this long before the window"
    )
    required: StrictBool = Field(
        default=True,
        description="the cutover waits until the customers are told of the window (a notice that could not be sent is "
        "tried again by `upgrader run-due`, backing off 1, 5, 15, 60 min, then hourly; the window is postponed if it closes meanwhile); false: cut over anyway",
    )


class OperatorWebhook(_Model):
    """Where operator notices are POSTed as JSON, signed with HMAC-SHA256 (X-Upgrader-Signature).
    The secret is never written in the plan: exactly one of secret_env, secret_file."""

    url: Annotated[StrictStr, AfterValidator(_checked(check_webhook_url)), Field(json_schema_extra={"format": "uri"})] = Field(
        description="http:// or https:// URL the notices are POSTed to (no user:password@)"
    )
    secret_env: Annotated[StrictStr, AfterValidator(_checked(check_env_name))] | None = Field(
        default=None, description="environment variable that holds the signing secret"
    )
    secret_file: NonEmptyStr | None = Field(
        default=None, description="file whose first line is the signing secret; relative to the plan file"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "secret" in data:
            raise _fail(
                "a secret is never written in the plan (plans are copied, mailed and kept in run records): "
                "put it in an environment variable (secret_env) or a file (secret_file)",
                at=("secret",),
            )
        return data

    @model_validator(mode="after")
    def _one_secret(self) -> OperatorWebhook:
        if self.secret_env is None and self.secret_file is None:
            raise _fail('needs the signing secret: "secret_env" (a variable name) or "secret_file" (a path)')
        if self.secret_env is not None and self.secret_file is not None:
            raise _fail('give one of "secret_env", "secret_file", not both', at=("secret_file",))
        return self


class Operator(_Model):
    """Tell the operators - never the customers - when a run is held, waits for approval, is
    rolled back or fails: host, step, the error's last lines and the commands to run next. Mail
    goes through the same SMTP settings (UPGRADER_SMTP_*) as the announce block's."""

    email: Annotated[list[Email], Field(min_length=1)] | None = Field(default=None, description="operator addresses")
    sender: Email | None = Field(default=None, description="From: address of operator mail (default: announce.sender)")
    webhook: OperatorWebhook | None = Field(default=None, description="POST each notice as signed JSON")


# The `validate` field shadows pydantic's deprecated BaseModel.validate() classmethod; the plan
# format's key name wins (use Plan.model_validate). Silence pydantic's warning about it.
_quiet = warnings.catch_warnings()
_quiet.__enter__()
warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)


def _check_version(value: object) -> object:
    if type(value) is not int:  # Literal[1] alone would take true and 1.0
        raise _fail("expected 1, got {got}", got=_describe(value))
    return value


class Plan(_Model):
    """An upgrader plan: how to upgrade one pet VM by the snapshot/twin workflow."""

    model_config = ConfigDict(
        extra="forbid",
        title="upgrader plan",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Annotated[Literal[1], BeforeValidator(_check_version)] = Field(default=1, description="plan format version")
    description: StrictStr | None = Field(default=None, description="free text shown in reports")
    source: Source = Field(description="the production VM")
    ssh: SshAccess = Field(description="SSH access to production and to the twin")
    staging: Staging = Field(description="the isolated staging segment the twin runs on")
    guest_state_dir: AbsPath = Field(
        default="/var/db/upgrader", description="directory on the guest where per-step done-markers are written"
    )
    upgrade: Annotated[list[UpgradeStep], Field(min_length=1)] = Field(
        description="upgrade steps run on the twin, in order; each has `run`, `reboot` or `ansible`"
    )
    validate: Checks = Field(  # shadows the deprecated BaseModel.validate; see the class statement
        default=[], description="checks the upgraded twin must pass before cutover"
    )
    verify: Checks | None = Field(
        default=None, description="checks after cutover (default: the same as validate)"
    )
    sync: Sync = Field(description="data copied from production to the twin")
    takeover: Takeover = Field(description="how the twin becomes production")
    window: Window | None = Field(default=None, description="maintenance window for the cutover")
    announce: Announce | None = Field(default=None, description="mail to users before the cutover")
    operator: Operator | None = Field(
        default=None, description="tell the operators (mail, webhook) when a run is held, waits for approval, is rolled back or fails"
    )
    approval: Literal["none", "required"] = Field(
        default="none", description='"required": wait for `upgrader approve` before cutover'
    )
    keep_old_for: Duration = Field(
        default=timedelta(days=7), json_schema_extra={"default": "7d"}, description="keep the old VM (for rollback) this long after cutover"
    )
    on_failure: Literal["hold", "abort"] = Field(
        default="hold",
        description='a failed clone, upgrade, validation or pre-sync step: "hold" keeps the twin for repair '
        "(`upgrader ssh --twin`, then `retry`, `skip`, `revert` or `abort`); \"abort\" removes it at once",
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keeps_old_vm(self) -> Plan:
        if self.keep_old_for <= timedelta(0):
            raise _fail(
                "must be longer than 0: the old VM is what a rollback goes back to "
                "(`upgrader decommission HOST` retires it early when you are sure), got {got}",
                at=("keep_old_for",),
                got=_describe(self.keep_old_for),
            )
        return self

    @model_validator(mode="after")
    def _announce_needs_window(self) -> Plan:
        if self.announce is not None and self.window is None:
            raise _fail("an announcement needs a window: customers are told the window's time (add a `window:`, "
                        "or drop `announce:`; without a window the run cuts over right after pre-sync, or after "
                        "`upgrader approve` with `approval: required`)", at=("announce",))
        return self

    @model_validator(mode="after")
    def _operator_channels(self) -> Plan:
        op, announce = self.operator, self.announce
        if op is not None:
            try:
                check_operator(op.email or [], op.sender, op.webhook is not None,
                               announce.sender if announce else None, announce.to if announce else [])
            except PlanCheckError as exc:
                raise _fail("{why}", at=("operator", *exc.at), why=exc.message) from None
        return self

    @model_validator(mode="after")
    def _client_hold(self) -> Plan:
        hold = self.takeover.hold if self.takeover.hold is not None else list(default_ports(self))
        at = ("takeover", "hold") if self.takeover.hold is not None else ("takeover",)
        try:
            check_hold(hold, self.ssh.prod.port)
        except PlanCheckError as exc:
            raise _fail("{why}", at=(*at, *exc.at), why=exc.message) from None
        return self

    @model_validator(mode="after")
    def _twin_differs(self) -> Plan:
        if self.twin_name == self.source.domain:
            raise _fail(
                "the twin must not have the same name as the production domain, got {got}",
                at=("staging", "twin_name"),
                got=_describe(self.twin_name),
            )
        return self

    @model_validator(mode="after")
    def _ansible_pins_the_twin(self) -> Plan:
        if self.ssh.staging.known_hosts is None:
            for i, step in enumerate(self.upgrade):
                if isinstance(step, AnsibleStep):
                    raise _fail("an `ansible:` step needs ssh.staging.known_hosts: its playbook runs over the same "
                                "pinned SSH path as every other step and accepts no host key without one",
                                at=("upgrade", i, "ansible"))
        return self

    def failure_policy(self, step: str | None) -> str:
        """`hold` or `abort` for a failure of journal key `step` ("upgrade[3]": that step's own
        `on_failure` if it has one)."""
        index = upgrade_index(step)
        own = self.upgrade[index].on_failure if index is not None and index < len(self.upgrade) else None
        return own or self.on_failure

    @property
    def checks(self) -> list[Check]:
        """The pre-cutover checks (the `validate:` list)."""
        return self.validate

    @property
    def verify_checks(self) -> list[Check]:
        """The post-cutover checks: `verify:` if given, else the `validate:` list."""
        return self.verify if self.verify is not None else self.validate

    @property
    def twin_name(self) -> str:
        return self.staging.twin_name.format(domain=self.source.domain)

    @property
    def base_dir(self) -> Path:
        """Directory of the plan file; relative paths in the plan are relative to it."""
        return self._base_dir

    @property
    def path(self) -> Path | None:
        """The plan file this was loaded from (None if parsed from text without a real file)."""
        return self._path

    def resolve_path(self, p: str) -> Path:
        """A path from the plan (ssh key, known_hosts, template_dir): `~` expanded, relative paths
        resolved against the plan file's directory."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self._base_dir / path


_quiet.__exit__(None, None, None)



# --------------------------------------------------------------------------------------------
# YAML: compose with positions
# --------------------------------------------------------------------------------------------

_Pos = tuple[int, int]
_KeyPath = tuple[str | int, ...]


class _PlanLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and does not read 1:30 as the base-60 number 90."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not allowed in plan files; repeat the value instead",
                event.start_mark,
            )
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


# YAML 1.1 implicit resolvers minus the sexagesimal int/float forms (so `time: 03:30` stays a string).
_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlanLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_PlanLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _Doc:
    data: Any
    values: dict[_KeyPath, _Pos] = field(default_factory=dict)  # key path -> position of the value
    keys: dict[_KeyPath, _Pos] = field(default_factory=dict)  # key path -> position of the key


def _pos(mark: yaml.Mark) -> _Pos:
    return (mark.line + 1, mark.column + 1)


def _format_path(path: Iterable[str | int]) -> str:
    out = ""
    for el in path:
        if isinstance(el, int):
            out += f"[{el}]"
        else:
            name = str(el)
            if not name or any(c.isspace() for c in name):
                name = json.dumps(name)  # a blank key stays visible: "" or " "
            out += f".{name}" if out else name
    return out


class _Problems:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.items: list[tuple[int, int, str]] = []

    def add(self, pos: _Pos | None, path: _KeyPath, message: str) -> None:
        line, col = pos or (0, 0)
        where = f"{self.filename}:{line}:{col}" if pos else self.filename
        key = _format_path(path)
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        self.items.append((line, col, text))

    def error(self) -> PlanError:
        seen: set[str] = set()
        lines = []
        for _, _, text in sorted(self.items, key=lambda t: (t[0], t[1])):
            if text not in seen:
                seen.add(text)
                lines.append(text)
        return PlanError(lines)

    def __bool__(self) -> bool:
        return bool(self.items)


# what PyYAML says when a line is indented more or less than its siblings
_INDENTATION_SIGNS = ("mapping values are not allowed here", "expected <block end>", "did not find expected key",
                      "could not find expected ':'", "did not find expected '-' indicator")
INDENTATION_HINT = "(hint: nested keys must be indented by the same number of spaces; tabs are not allowed)"


def _yaml_problem(problems: _Problems, exc: yaml.YAMLError, text: str) -> None:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None and exc.problem_mark is not None:
            message = f"{exc.problem} ({exc.context} at line {exc.context_mark.line + 1})"
        if "'\\t'" in message or (mark is not None and _char_at(text, mark.index) == "\t"):
            message += "; YAML does not allow tabs for indentation, use spaces"
        elif any(sign in (exc.problem or "") for sign in _INDENTATION_SIGNS):
            message = f"bad indentation: {message} {INDENTATION_HINT}"
        problems.add(_pos(mark) if mark is not None else (1, 1), (), message)
    elif isinstance(exc, yaml.reader.ReaderError):
        line, col = _line_col(text, exc.position)
        ch = exc.character
        shown = f"U+{ch:04X}" if isinstance(ch, int) else (f"U+{ord(ch):04X}" if isinstance(ch, str) and len(ch) == 1 else repr(ch))
        problems.add((line, col), (), f"control character {shown} is not allowed in YAML")
    else:
        problems.add((1, 1), (), f"invalid YAML: {exc}")


def _char_at(text: str, index: int) -> str:
    return text[index] if 0 <= index < len(text) else ""


def _line_col(text: str | bytes, index: int) -> _Pos:
    nl: Any = b"\n" if isinstance(text, bytes) else "\n"
    line = text.count(nl, 0, index) + 1
    col = index - (text.rfind(nl, 0, index) + 1) + 1
    return line, col


def _compose(text: str, problems: _Problems) -> _Doc | None:
    """YAML text -> data plus positions, or None with problems recorded."""
    try:
        loader = _PlanLoader(text)
    except yaml.YAMLError as exc:  # ReaderError: control characters
        _yaml_problem(problems, exc, text)
        return None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            _yaml_problem(problems, exc, text)
            return None
        if root is None:
            problems.add((1, 1), (), "the plan is empty")
            return None
        if not isinstance(root, yaml.MappingNode):
            try:
                got = _describe(loader.construct_document(root))
            except yaml.YAMLError:
                got = "something else"
            problems.add(_pos(root.start_mark), (), f"expected a mapping at the top level, got {got}")
            return None
        doc = _Doc(data=None)
        doc.values[()] = _pos(root.start_mark)
        stack: list[tuple[yaml.Node, _KeyPath]] = [(root, ())]
        while stack:
            node, path = stack.pop()
            if isinstance(node, yaml.MappingNode):
                first_seen: dict[str, _Pos] = {}
                for key_node, value_node in node.value:
                    kpos = _pos(key_node.start_mark)
                    if key_node.tag == _MERGE_TAG:
                        problems.add(kpos, path, "merge keys (<<) are not allowed in plan files")
                        continue
                    if not isinstance(key_node, yaml.ScalarNode):
                        problems.add(kpos, path, "keys must be plain strings")
                        continue
                    try:
                        key = loader.construct_object(key_node)
                    except yaml.YAMLError as exc:
                        _yaml_problem(problems, exc, text)
                        continue
                    except (ValueError, OverflowError) as exc:  # e.g. an impossible date as a key
                        problems.add(kpos, path, f"cannot read this key: {exc}")
                        continue
                    if not isinstance(key, str):
                        problems.add(kpos, path, f"keys must be strings, got {_describe(key)} (quote it)")
                        continue
                    child = (*path, key)
                    if key in first_seen:
                        line, col = first_seen[key]
                        problems.add(kpos, child, f'duplicate key "{key}" (first defined at {line}:{col})')
                        continue
                    first_seen[key] = kpos
                    doc.keys[child] = kpos
                    doc.values[child] = _pos(value_node.start_mark)
                    stack.append((value_node, child))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    doc.values[(*path, i)] = _pos(item.start_mark)
                    stack.append((item, (*path, i)))
        if problems:
            return None
        try:
            doc.data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            _yaml_problem(problems, exc, text)
            return None
        except (ValueError, OverflowError) as exc:  # PyYAML's own readers: 2024-13-45, 4300+ digit ints
            where, path = _unreadable_scalar(loader, root, doc)
            problems.add(where, path, f"cannot read this value: {exc}")
            return None
        return doc
    except RecursionError:
        problems.add((1, 1), (), "the YAML is nested too deeply")
        return None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# pydantic errors -> plan problems
# --------------------------------------------------------------------------------------------

_STEP_TAG_NAMES = set(_STEP_TAGS)


def _data_path(loc: tuple[str | int, ...], data: Any) -> tuple[_KeyPath, bool]:
    """pydantic loc -> key path in the YAML (union tags dropped), and whether the value exists."""
    path: list[str | int] = []
    cur = data
    exists = True
    for el in loc:
        if el in _STEP_TAG_NAMES and not (exists and isinstance(cur, dict) and el in cur):
            continue
        path.append(el)
        if exists and isinstance(cur, dict) and el in cur:
            cur = cur[el]
        elif exists and isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur):
            cur = cur[el]
        else:
            exists = False
    return tuple(path), exists


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class validating the mapping at pydantic `loc` (tags included), for "allowed keys"."""
    tp: Any = Plan
    for el in loc:
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            if el not in fields:
                return None
            tp = fields[el].annotation
        elif origin is list:
            tp = get_args(tp)[0]
        elif origin is dict:
            tp = get_args(tp)[1]
        elif origin in (Union, types.UnionType):
            for arg in get_args(tp):
                if get_origin(arg) is Annotated and any(isinstance(m, Tag) and m.tag == el for m in arg.__metadata__):
                    tp = arg
                    break
            else:
                return None
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _allowed_keys(model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    return ", ".join((f.alias or name) for name, f in model.model_fields.items())


_LITERAL_ITEM_RE = re.compile(r"'((?:[^'\\]|\\.)*)'|(-?\d+)")


def _literal_choices(expected: str) -> list[str]:
    out = []
    for m in _LITERAL_ITEM_RE.finditer(expected):
        out.append(f'"{m.group(1)}"' if m.group(1) is not None else m.group(2))
    return out


def _message(err: Any) -> str:
    kind = err["type"]
    value = err.get("input")
    got = _describe(value)
    ctx = err.get("ctx") or {}
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true/false, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return f"expected an integer, got {got}"
    if kind in ("string_type", "string_unicode", "string_sub_type"):
        return f"expected a string, got {got}"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return f"expected a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"expected a mapping, got {got}"
    if kind == "literal_error":
        choices = _literal_choices(str(ctx.get("expected", "")))
        if len(choices) == 1:
            return f"expected {choices[0]}, got {got}"
        return f"expected one of {', '.join(choices)}, got {got}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"needs at least {n} item{'s' if n != 1 else ''}" + ("" if isinstance(value, list) and value else ", got none")
    if kind.startswith("datetime") or kind.startswith("date_"):
        return f'expected a date and time like "2024-06-01T03:00:00", got {got}'
    if kind == "step_kind":
        if isinstance(value, dict) and sum(k in value for k in _STEP_KINDS) > 1:
            both = " and ".join(f'"{k}"' for k in _STEP_KINDS if k in value)
            return f'an upgrade step has one of "run", "reboot" or "ansible", not {both}; make one step of each'
        if isinstance(value, dict):
            return 'an upgrade step needs "run", "reboot" or "ansible"'
        return f'expected a mapping with "run", "reboot" or "ansible", got {got}'
    msg = str(err.get("msg", "invalid value"))
    if kind == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _translate(exc: ValidationError, doc: _Doc, problems: _Problems) -> None:
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        extra_at = tuple(ctx.get("at", ())) if kind == "plan" else ()
        path, _ = _data_path(loc + extra_at, doc.data)
        if kind == "missing":
            key = path[-1] if path else "?"
            message = f'missing required key "{key}"'
        elif kind == "extra_forbidden":
            message = f"unknown key (allowed: {_allowed_keys(_model_at(loc[:-1]))})"
        else:
            message = _message(err)
        if kind == "extra_forbidden" and path in doc.keys:
            pos = doc.keys[path]
        else:
            probe = path
            while probe not in doc.values and probe:
                probe = probe[:-1]
            pos = doc.values.get(probe, (1, 1))
        problems.add(pos, path, message)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _unreadable_scalar(loader: yaml.SafeLoader, root: yaml.Node, doc: _Doc) -> tuple[_Pos, _KeyPath]:
    """The first scalar PyYAML's constructors choke on, with its position and key path."""
    by_mark = {pos: path for path, pos in doc.values.items()}
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.construct_object(node)
            except (ValueError, OverflowError, yaml.YAMLError):
                pos = _pos(node.start_mark)
                return pos, by_mark.get(pos, ())
        elif isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in reversed(node.value) for v in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return _pos(root.start_mark), ()


def _surrogate_problems(doc: _Doc, problems: _Problems) -> None:
    for path, in_key in lone_surrogates(doc.data):
        pos = (doc.keys if in_key else doc.values).get(path, (1, 1))
        problems.add(pos, printable(path), "contains a lone surrogate (a YAML escape like \\ud800 that is not a "
                     "character); write the character itself, or \\U0001F600 for one outside the BMP")


def _schedule_problems(plan: Plan, doc: _Doc, problems: _Problems, now: datetime) -> None:
    window = plan.window
    if window is not None and window.rrule is not None:
        problem = rrule_problem(window.rrule, window.timezone, now)
        if problem is not None:
            problems.add(doc.values.get(("window", "rrule"), (1, 1)), ("window", "rrule"), problem)
            return
    if window is not None and (found := window_problem(window, now)) is not None:
        at = ("window", found[0])
        problems.add(doc.values.get(at, doc.keys.get(at, (1, 1))), at, found[1])


def parse_plan(text: str | bytes, filename: str, *, now: datetime | None = None) -> Plan:
    """Validate plan text. `filename` is used in messages and for Plan.base_dir. With `now`
    (aware), also refuse what depends on the clock: a window rule with no occurrence in the next
    10 years (`plan check`, `start`); never pass it for a run already under way."""
    problems = _Problems(str(filename))
    if isinstance(text, bytes):
        if len(text) > MAX_PLAN_BYTES:
            raise PlanError([f"{filename}: the plan is too large ({len(text)} bytes; the limit is 1 MiB)"])
        raw = text[3:] if text.startswith(b"\xef\xbb\xbf") else text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, col = _line_col(raw, exc.start)
            problems.add((line, col), (), f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")
            raise problems.error() from None
    elif len(text) > MAX_PLAN_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_PLAN_BYTES:
        raise PlanError([f"{filename}: the plan is too large (the limit is 1 MiB)"])
    text = text.removeprefix("\ufeff")
    doc = _compose(text, problems)
    if doc is None:
        raise problems.error()
    _surrogate_problems(doc, problems)
    if problems:
        raise problems.error()
    try:
        plan = Plan.model_validate(doc.data)
    except ValidationError as exc:
        try:
            _translate(exc, doc, problems)
        except UnicodeError:  # pydantic cannot render a lone surrogate (e.g. "\uD800") in its errors
            problems.add((1, 1), (), "a value contains an invalid Unicode escape (a lone surrogate)")
        raise problems.error() from None
    except RecursionError:
        problems.add((1, 1), (), "the YAML is nested too deeply")
        raise problems.error() from None
    if now is not None:
        _schedule_problems(plan, doc, problems, now)
        if problems:
            raise problems.error()
    base = Path(filename).expanduser()
    plan._base_dir = base.absolute().parent
    plan._path = base
    return plan


def load_plan(path: str | os.PathLike[str], *, now: datetime | None = None) -> Plan:
    """Read and validate a plan file. Raises PlanError with every problem, sorted by line.
    `now`: see parse_plan."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise PlanError([f"{name}: no such file"]) from None
    except IsADirectoryError:
        raise PlanError([f"{name}: is a directory, not a plan file"]) from None
    except OSError as exc:
        raise PlanError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError([f"{name}: the plan is too large (more than 1 MiB); is this really a plan file?"])
    return parse_plan(data, name, now=now)


def resolve_plan_path(name: str, cwd: Path | None = None) -> Path:
    """Find a plan: `name` as given if it exists; a bare name is also looked up in playbooks/;
    ".yml" / ".yaml" are tried when the name has no such suffix."""
    base = Path(cwd) if cwd is not None else Path(".")
    given = Path(name).expanduser()
    suffixes = [""] if given.suffix in (".yml", ".yaml") else ["", ".yml", ".yaml"]
    dirs = [base]
    if not given.is_absolute() and len(given.parts) == 1:
        dirs.append(base / "playbooks")
    for d in dirs:
        for suffix in suffixes:
            candidate = (given if given.is_absolute() else d / given).with_name(given.name + suffix)
            if candidate.is_file():
                return candidate
    looked = ", ".join(["." if d == base else f"{d.relative_to(base)}/" for d in dirs]) if not given.is_absolute() else str(given.parent)
    available = sorted({p.stem for p in (base / "playbooks").glob("*.y*ml")}) if (base / "playbooks").is_dir() else []
    hint = "give the path to a plan file"
    if available:
        hint += "; plans in playbooks/: " + ", ".join(available)
    raise InputError(f'plan "{name}" not found (looked in: {looked})', hint=hint)


def plan_digest(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the plan file's bytes (recorded with each run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(65536), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_schema() -> dict[str, Any]:
    """The JSON Schema of plan files."""
    schema = Plan.model_json_schema(by_alias=True)
    schema["title"] = "upgrader plan"
    schema["description"] = (
        "How to upgrade one pet VM by the snapshot/twin workflow: the VM (source), how to reach it "
        "(ssh), where the twin runs (staging), the upgrade steps, the checks, the data to sync and "
        "how the twin takes over."
    )
    return schema
