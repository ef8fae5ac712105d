"""The narrow, typed ports the steps talk through. Real adapters live in upgrader/adapters/,
fakes with canned results in upgrader/testing/. A step never imports an adapter."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

OutputSink = Callable[[str], None]


@dataclass(frozen=True)
class Command:
    """A shell command built from a template and quoted arguments; `secrets` print as ***."""

    template: str
    args: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()

    @classmethod
    def raw(cls, text: str) -> "Command":
        """A command the operator wrote in the plan: used as is (it is theirs to quote)."""
        return cls(text.replace("{", "{{").replace("}", "}}"))

    @property
    def line(self) -> str:
        return self.template.format(*(shlex.quote(a) for a in self.args))

    def short(self, limit: int = 100) -> str:
        """The masked command cut to one line, for messages."""
        text = " ".join(self.masked().split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def masked(self) -> str:
        text = self.line
        for secret in self.secrets:
            if secret:
                text = text.replace(shlex.quote(secret), "***").replace(secret, "***")
        return text

    def __str__(self) -> str:
        return self.masked()


def cmd(template: str, *args: str, secrets: Sequence[str] = ()) -> Command:
    """`cmd("mkdir -p {} && touch {}", d, f)` quotes every argument."""
    return Command(template, tuple(str(a) for a in args), tuple(secrets))


SIGNALLED = -1  # Result.rc of a command killed by a signal (the guest's sshd sent no exit status)


@dataclass(frozen=True)
class Result:
    """One remote call's outcome (invoke's Result shape)."""

    command: str  # masked
    rc: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, lines: int = 10) -> str:
        text = (self.stdout + ("\n" + self.stderr if self.stderr else "")).strip()
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Prompt:
    pattern: str  # regex
    answer: str


# ---------------------------------------------------------------------------------- hypervisor


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    overlays: dict[str, str]  # disk target (vda) -> overlay path prod now writes to
    bases: dict[str, str]  # disk target -> frozen base path the twin starts from


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    running: bool
    disks: dict[str, str]  # target -> source path
    nics: dict[str, str] = field(default_factory=dict)  # mac -> network/bridge
    links: dict[str, bool] = field(default_factory=dict)  # mac -> link up?
    memory: int = 0  # bytes the domain is defined with (a twin cloned from it gets as much); 0: unknown


class NicScope(str, Enum):
    """Which definition of a running domain a NIC change goes to: LIVE, what the guest has now
    (the takeover inside the downtime window: one update per NIC); CONFIG, the persistent
    definition a (re)start boots from (written once the service is back); BOTH. A domain that is
    not running has only its persistent definition: every scope changes that."""

    BOTH = "both"
    LIVE = "live"
    CONFIG = "config"


@dataclass(frozen=True)
class NicPlacement:
    """Where a domain's NICs are in one of its definitions: mac -> network/bridge, mac -> link up."""

    nics: dict[str, str]
    links: dict[str, bool]


@dataclass(frozen=True)
class Claim:
    """A run's claim on a VM, kept on the VM itself (libvirt domain <metadata>) so that every
    controller sees it, whatever its state dir or the name it knows the host by. A twin defined
    from the claimed VM carries the same claim: it belongs to the same run."""

    run_id: str
    host: str  # the HOST name the run was started under
    controller: str  # the machine the controller ran on
    state_dir: str  # where that controller keeps the run
    since: str  # ISO time the claim was made

    def holder(self) -> str:
        return f"run {self.run_id} of host {self.host!r} (controller {self.controller}, state dir {self.state_dir}, since {self.since})"


@dataclass(frozen=True)
class Checkpoint:
    """A point of a twin's disks one can revert to: each disk's image at that moment, frozen
    (read-only from then on: an overlay took its place as the active image)."""

    name: str
    disks: dict[str, str]  # disk target -> frozen image path
    bytes: int = 0  # written since: the allocation of every image above the frozen ones


class Hypervisor(Protocol):
    def check(self) -> str:
        """Reachability: returns a description (hypervisor + version). Raises InfraError."""

    def domain(self, name: str) -> DomainInfo | None: ...

    def free_bytes(self, directory: str) -> int: ...

    def free_memory(self) -> int:
        """Bytes of memory the hypervisor host can still give a new domain (free plus what the
        kernel's caches give back); preflight compares it with the twin's memory."""

    def snapshot(self, domain: str, name: str, directory: str | None) -> SnapshotInfo:
        """External, disk-only, atomic snapshot: prod continues on new overlays."""

    def find_snapshot(self, domain: str, name: str) -> SnapshotInfo | None:
        """Probe: is the snapshot's overlay already active for the domain?"""

    def clone(self, source: str, twin: str, snapshot: SnapshotInfo, network: str,
              macs: dict[str, str] | None = None) -> DomainInfo:
        """Define `twin` from source's inactive XML: new name/UUID, disks on new overlays over
        the snapshot's bases, NICs on `network` with the same MACs unless `macs` maps a source
        MAC to another. Not started."""

    def start(self, name: str) -> None: ...

    def destroy(self, name: str) -> None:
        """Stop hard if running (no error if already off)."""

    def undefine(self, name: str) -> int:
        """Remove the domain and the disk images only it uses. Returns bytes freed."""

    def disk_chains(self, name: str) -> list[list[str]]:
        """Each disk's image chain, active image first, down to the last backing file ([] if
        the domain does not exist). Journaled before an undefine so a crash halfway through
        the deletions can finish them."""

    def delete_unused(self, chains: list[list[str]]) -> int:
        """Walk each chain from the top and delete images until one is still used by a domain or
        as a backing file; images already gone are skipped. Returns bytes freed."""

    def remove_orphans(self, owner: str, bases: dict[str, str]) -> int:
        """Delete `owner`'s overlays over `bases` that no domain uses (a clone killed before it
        defined the domain). Returns bytes freed."""

    def set_link(self, domain: str, mac: str, up: bool, scope: NicScope = NicScope.BOTH) -> None:
        """Link state of NIC `mac`; a link coming up in the live domain announces itself."""

    def move_nic(self, domain: str, mac: str, network: str, scope: NicScope = NicScope.BOTH) -> None:
        """Put NIC `mac` on `network` (a libvirt network or a bridge); live, it announces itself."""

    def persistent_nics(self, domain: str) -> NicPlacement | None:
        """The NICs of the domain's persistent definition (what a start boots with); `domain()`
        reports the live ones of a running domain. None if the domain does not exist."""

    def merge_back(self, domain: str, snapshot: SnapshotInfo) -> int:
        """Fold the snapshot's overlays back into their bases (blockcommit), refusing when
        another image still depends on the base. Returns bytes freed."""

    def flatten(self, domain: str) -> None:
        """Make the domain's disks independent of their backing files (blockpull). Checkpoints
        are merged first (merge_checkpoints), so that none of their images is stranded."""

    def checkpoint(self, domain: str, name: str) -> Checkpoint:
        """O(1), disk-only, no snapshot metadata: every disk of the (running or shut off) domain
        goes on a new overlay (DOMAIN.TARGET.ckpt-NAME.qcow2) over its current image, which is
        frozen as the checkpoint. A name already in the domain's chain is returned as it is; a
        leftover overlay of that name that the domain does not use is removed first."""

    def find_checkpoint(self, domain: str, name: str) -> Checkpoint | None:
        """The checkpoint if the domain's current chain contains it (its overlay is in use)."""

    def checkpoints(self, domain: str) -> list[Checkpoint]:
        """The domain's checkpoints in chain order, oldest first, each with the bytes written
        since ([] if none, or the domain does not exist)."""

    def revert_checkpoint(self, domain: str, name: str) -> int:
        """Put the shut-off domain back to checkpoint `name`: each disk's active image becomes a
        new empty overlay over the checkpoint's frozen image; every image above it (later
        checkpoints, the old active overlay) is deleted. The checkpoint stays; later ones are
        gone. Refused (UnsafeOperation) while the domain runs. Killed at any point, calling it
        again finishes the job (it reverts again: the same disk content while the domain was not
        started in between). Returns bytes freed."""

    def merge_checkpoints(self, domain: str) -> int:
        """Fold every checkpoint overlay back (block commit with pivot when running, an offline
        commit when shut off) so the chain is again as clone left it; delete the merged images.
        Idempotent (0 when there is nothing to merge). Returns bytes freed."""

    def claim_of(self, domain: str) -> Claim | None:
        """The claim recorded on the domain (None if none, or the domain does not exist)."""

    def set_claim(self, domain: str, claim: Claim | None) -> None:
        """Record `claim` on the domain (persistent config and, if running, live), or remove it."""

    def autostart(self, name: str) -> bool:
        """Does the hypervisor start the domain when it boots? (A host-level setting: not in the
        domain's XML, so a clone does not carry it.) Raises StepFailed for an unknown domain."""

    def set_autostart(self, name: str, on: bool) -> None:
        """Switch the domain's autostart on or off (idempotent)."""

    # client hold (issue 14): new connections to prod are dropped on the hypervisor during the
    # cutover so clients retransmit instead of being refused. All idempotent.

    def define_client_hold(self, name: str, ports: Sequence[int]) -> None:
        """Define (or redefine) nwfilter `name`: drop inbound TCP SYNs (SYN set, ACK/RST/FIN clear)
        to each port, IPv4 only (libvirt cannot match TCP flags for IPv6: an IPv6 rule would cut
        established connections too). Established connections pass (they drain)."""

    def hold_clients(self, domain: str, mac: str, name: str) -> None:
        """LIVE only (never the persistent config): the running domain's NIC `mac` gets
        <filterref filter=name/>. Raises InfraError(hint) if the domain is not running / NIC missing /
        the NIC already has another filterref (refuse, hint: the NIC has its own nwfilter)."""

    def release_clients(self, domain: str, mac: str) -> None:
        """LIVE: remove our filterref from NIC `mac` if present; no-op if the domain is off,
        missing, or the NIC carries no upgrader-hold-* filterref."""

    def undefine_client_hold(self, name: str) -> None:
        """Undefine nwfilter `name`; no-op if it does not exist."""

    def client_holds(self, domain: str) -> dict[str, str]:
        """mac -> filter name for the running domain's NICs that are held: the live XML has a
        <filterref> to an `upgrader-hold-*` filter AND its rules are instantiated (an nwfilter
        binding for that NIC's target dev with that filter exists). {} if off/missing."""

    def client_hold_filters(self) -> list[str]:
        """Names of defined nwfilters that start with `upgrader-hold-`, sorted."""


HOLD_PREFIX = "upgrader-hold-"  # every client-hold nwfilter's name starts with it


def client_hold_name(run_id: str) -> str:
    """The nwfilter of run `run_id`'s client hold."""
    return f"{HOLD_PREFIX}{run_id}"


# --------------------------------------------------------------------------------------- shell


def running_path(mark: str) -> str:
    """Where a marked command's remote shell keeps its pid while it runs (see Shell.run)."""
    return mark.removesuffix(".done") + ".running"


@dataclass(frozen=True)
class RemoteForward:
    """A remote (reverse) forward over the orchestrator's SSH connection to a guest: the guest's
    sshd listens on its own 127.0.0.1:`listen_port`, and every connection to it is joined, from
    the orchestrator, to `host`:`port` (e.g. a package proxy). The guest gets no route."""

    listen_port: int
    host: str
    port: int

    def describe(self) -> str:
        return f"127.0.0.1:{self.listen_port} -> {self.host}:{self.port}"


class Shell(Protocol):
    """One guest reached over SSH (or a fake)."""

    name: str  # "prod" / "staging" / "old"

    def run(
        self,
        command: Command,
        *,
        timeout: float = 600,
        prompts: Sequence[Prompt] = (),
        env: dict[str, str] | None = None,
        on_output: OutputSink | None = None,
        mark: str | None = None,
    ) -> Result:
        """Run; never raises on a non-zero exit (check `Result.ok`); raises InfraError when the
        connection cannot be made, ConnectionLost when it dies mid-command, StepFailed on
        timeout. `mark`: a file created on the guest in the same remote shell right after a zero
        exit, so "the command finished" survives the orchestrator dying between the command's end
        and its journal entry; while the command runs, that shell's pid is in `running_path(mark)`
        so a probe can wait for a command that outlived its connection instead of starting it twice."""

    def boot_id(self) -> str: ...

    def forward(self, forward: RemoteForward) -> None:
        """Open `forward` on this guest's connection and keep it: re-opened on every reconnect
        (after a reboot, a lost connection) until `unforward`. Raises ForwardRefused (errors.py)
        when the guest's sshd refuses it (AllowTcpForwarding, dropbear -k/-j, port in use). A
        connection the target does not accept is answered on the guest with an HTTP 502 naming
        it (the tool there says why at once instead of hanging)."""

    def unforward(self, forward: RemoteForward) -> None:
        """Close `forward` (no error if it is not open, or the connection is gone)."""

    def reboot(self, *, timeout: float) -> str:
        """Reboot and wait (bounded) until a fresh connection sees a new boot id; returns it."""

    def close(self) -> None: ...


class ShellFactory(Protocol):
    def connect(self, role: str, *, wait: float | None = None) -> Shell:
        """role: "prod" or "staging" (the plan's ssh targets). After takeover the twin answers
        on the prod path and the old VM on the staging path. `wait`: how long to keep trying a
        machine that does not answer yet (None: the adapter's default, long enough for a reboot;
        0: one attempt, bounded by the target's connect_timeout - preflight)."""

    def reset(self) -> None:
        """Drop every open connection: the machines behind the roles changed (takeover)."""


# ---------------------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncStats:
    files: int  # files transferred
    bytes: int  # bytes transferred (literal data)
    seconds: float  # the pass alone (rsync), without setting the sync up or taking it down
    rc: int = 0
    key_id: str = ""  # the sync key's marker, upgrader-sync-<run_id>-<nonce> ("" if none was made)
    key_left: bool = False  # its removal failed: still authorised on the source until a sweep
    setup_seconds: float = 0.0  # Syncer.sync: its open (key pair, authorisation, tunnel); 0 for a session's pass
    close_seconds: float = 0.0  # Syncer.sync: its close (key line, tunnel, key pair); 0 for a session's pass


class SyncSession(Protocol):
    """An open sync (Syncer.open): the key is authorised on the source and the tunnel is up, so
    a pass is only rsync. Held in this process only; the key a killed process left is removed by
    the next sync's authorisation or by `sweep`."""

    key_id: str  # the session key's marker, upgrader-sync-<run_id>-<nonce>

    def pass_(self, *, final: bool, on_output: OutputSink | None = None) -> SyncStats:
        """One rsync pass of the session's paths. `final`: exit 24 (vanished files) is an error.
        Raises on a revoked or closed session, and ConnectionLost when the tunnel went with
        its connection (either side's connection is not the one it was opened on, or died
        during the pass): close it and open a new one. `seconds` is the pass alone; `key_left`
        is always False."""

    def revoke(self) -> bool:
        """The least that must happen before the source leaves: remove the key line and its
        forced command from the source (one command) and let the tunnel go without waiting.
        No pass after it; the key pair stays on the target for `close` or a `sweep`. Bounded,
        never raising, idempotent. True when the key line is gone from the source."""

    def close(self) -> bool:
        """`revoke` (unless done), then remove the key pair from the target; bounded and never
        raising (a failure is reported to the session's output). Idempotent. True when the key
        line is gone from the source."""


class Syncer(Protocol):
    def open(self, source: str, target: str, paths: Sequence[tuple[str, Sequence[str]]], *,
             on_output: OutputSink | None = None) -> SyncSession:
        """Set up a sync of `paths` (path, excludes) from role `source` to role `target` without
        joining their networks: a key made for this session is authorised on the source
        (restricted to rsync's sending side of `paths`, from the source's loopback; keys a killed
        sync left are dropped in the same edit), and the tunnel to it is opened. On a failure
        whatever was set up is removed before the error propagates."""

    def sync(
        self,
        source: str,
        target: str,
        paths: Sequence[tuple[str, Sequence[str]]],
        *,
        final: bool,
        on_output: OutputSink | None = None,
    ) -> SyncStats:
        """`open`, one `pass_`, `close`: the key is removed before returning or raising.
        `seconds` is the pass, `setup_seconds` the open, `close_seconds` the close; `key_left`
        says the removal failed."""

    def sweep(self, roles: Sequence[str], run_id: str | None = None, *, strict: bool = False) -> int:
        """Remove every sync key of `run_id` (any run's when None) from the authorized_keys of
        the guests in `roles`, and their key files. Returns how many key lines it removed. Safe
        when nothing is there. A role that does not answer, or whose edit fails, counts 0 and is
        skipped (the sweep is a clean-up on the way out: abort, resume, end of a run); with
        `strict` the first such failure is raised after every role was tried. An unknown role
        raises ValueError."""


# ------------------------------------------------------------------------------- playbooks


@dataclass(frozen=True)
class PackageProxy:
    """The plan's package proxy as a playbook sees it: the twin reaches it at `twin_url` (its
    own loopback), which a remote forward over the orchestrator's SSH connection carries to
    `host`:`port` as the orchestrator reaches it. Nothing else is forwarded."""

    twin_url: str  # e.g. "http://127.0.0.1:3142"
    listen_port: int  # the forward's port on the twin's 127.0.0.1
    host: str  # the proxy, from the orchestrator
    port: int
    # the forward is already open on upgrader's own connection to the twin (the upgrade phase holds
    # it for all its steps): the playbook's ssh must not ask for the same port again
    already_forwarded: bool = False

    @property
    def forward(self) -> str:
        """OpenSSH's -R argument."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"127.0.0.1:{self.listen_port}:{host}:{self.port}"


@dataclass(frozen=True)
class Playbook:
    """One ansible-playbook run: the playbook (resolved path) and what the plan gives it."""

    path: Path
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostRecap:
    """One host's line of the PLAY RECAP."""

    host: str
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class PlaybookResult:
    """What a playbook run did: its Result (the masked command line, ansible-playbook's exit code
    and the tail of its output) and the recap of each host (empty when it never got that far)."""

    result: Result
    recap: tuple[HostRecap, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result.ok and not any(h.failed or h.unreachable for h in self.recap)

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.recap)


class PlaybookRunner(Protocol):
    def check(self) -> str:
        """Can playbooks run here? Returns a description (where ansible-playbook is); raises
        InfraError with an install hint when it is missing."""

    def run_playbook(
        self,
        role: str,
        playbook: Playbook,
        *,
        workdir: Path,
        timeout: float,
        proxy: PackageProxy | None = None,
        on_output: OutputSink | None = None,
    ) -> PlaybookResult:
        """Run `playbook` against the guest in `role` ("staging": the twin) over the plan's pinned
        SSH path to it. `workdir`: a private directory of the run for the inventory, Ansible's
        local state and the log. Never raises on a failed play (check `PlaybookResult.ok`);
        raises InfraError when ansible-playbook is missing, HostKeyError when the guest's host key
        is not the pinned one, ConnectionLost when the guest became unreachable, StepFailed on
        timeout. Never runs two playbooks of one `workdir` at once: a run still going (one that
        outlived a killed orchestrator) is waited for first, up to `timeout`."""


# ------------------------------------------------------------------------------------ probing


@dataclass(frozen=True)
class Probe:
    """A network check: kind tcp / smtp / imap / http, against `host` (None = the role's service
    address) and `port`; `expect` is a regex the banner/body must match."""

    kind: str
    port: int
    host: str | None = None
    expect: str | None = None
    path: str = "/"
    status: int = 200
    timeout: float = 10


class Prober(Protocol):
    def probe(self, role: str, probe: Probe) -> str:
        """Run `probe` against the guest in `role` ("prod": from the client side of the
        production segment; "staging": through the isolated staging path). Returns what was
        seen (banner, status line); raises CheckFailed."""

    def wait_answers(self, role: str, probe: Probe, *, interval: float = 0.05, connect_timeout: float = 0.2) -> str:
        """Like `probe`, for waiting on a service that is about to come back: an attempt every
        `interval` seconds, each on a fresh connection (or proxy process) whose connect may take
        at most `connect_timeout`, until one passes or `probe.timeout` has run out (CheckFailed)."""
