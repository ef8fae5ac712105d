"""The public API of upgrader.plan: the shipped playbooks, path resolution, digest, schema,
and the model's computed properties."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from upgrader.durations import format_duration, parse_bytesize, parse_duration
from upgrader.errors import InputError, PlanError
from upgrader.plan import (
    Check,
    Plan,
    RebootStep,
    RunStep,
    load_plan,
    parse_plan,
    plan_digest,
    plan_schema,
    resolve_plan_path,
)

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
MINIMAL = (Path(__file__).parent / "fixtures" / "minimal.yml").read_text()


@pytest.mark.parametrize("name", ["debian13.yml", "lab-debian.yml"])
def test_the_lab_debian_plans_load_with_the_proxy_imap_and_the_mail_stores(name: str) -> None:
    plan = load_plan(PLAYBOOKS / name)
    assert plan.staging.packages is not None and plan.staging.packages.twin_url == "http://127.0.0.1:3142"
    assert any(step.expect for step in plan.upgrade)  # apt's own prompt, answered under a pty
    assert any(getattr(step, "reboot", False) for step in plan.upgrade)
    assert {c.kind for c in plan.validate} >= {"command", "smtp", "imap"}
    assert "imap" in {c.kind for c in plan.verify}
    assert [p.path for p in plan.sync.paths] == ["/var/mail/", "/home/alice/", "/var/spool/postfix/"]
    assert plan.sync.quiesce == ["systemctl stop postfix dovecot"]


@pytest.mark.parametrize("name", ["freebsd7.yml", "linux-debian.yml", "debian13-ansible.yml"])
def test_shipped_playbooks_load(name: str) -> None:
    plan = load_plan(PLAYBOOKS / name)
    assert isinstance(plan, Plan)
    assert plan.upgrade and plan.validate and plan.sync.paths
    assert plan.base_dir == PLAYBOOKS
    assert plan.keep_old_for == timedelta(days=7)


def test_freebsd7_plan_content() -> None:
    plan = load_plan(PLAYBOOKS / "freebsd7.yml")
    assert plan.source.domain == "mailhost"
    assert plan.source.libvirt_uri == "qemu:///system"
    assert plan.twin_name == "mailhost-twin"
    first = plan.upgrade[0]
    assert isinstance(first, RunStep)
    assert first.run == "freebsd-update -r 7.0-RELEASE upgrade"
    assert any(p.answer == "y" for p in first.expect)
    kinds = [type(s).__name__ for s in plan.upgrade]
    assert kinds.count("RebootStep") == 2 and isinstance(plan.upgrade[-1], RebootStep)
    assert plan.upgrade[-1].label == "reboot"
    ports = next(s for s in plan.upgrade if isinstance(s, RunStep) and "portupgrade" in s.run)
    assert ports.env["BATCH"] == "yes"
    assert {c.kind for c in plan.validate} == {"command", "smtp"}
    assert any(c.differential for c in plan.validate)
    assert plan.verify is None and plan.verify_checks == plan.validate
    assert plan.sync.quiesce == ["/etc/rc.d/sendmail stop"]
    assert plan.sync.presync.until_bytes == 16 * 1024 * 1024
    assert plan.takeover.strategy == "mac_move"
    assert plan.window is not None and plan.window.weekly is not None
    assert plan.window.weekly.time == "03:00"
    assert plan.announce is not None and plan.announce.to == ["mail-users@example.com"]
    assert plan.resolve_path(plan.ssh.prod.key or "") == PLAYBOOKS / "keys" / "upgrader_ed25519"
    assert plan.ssh.staging.connect_timeout == timedelta(seconds=20)


def test_debian_plan_uses_ip_move() -> None:
    plan = load_plan(PLAYBOOKS / "linux-debian.yml")
    assert plan.takeover.strategy == "ip_move" and plan.takeover.address == "192.0.2.25/24"
    assert any(isinstance(s, RunStep) and s.env.get("DEBIAN_FRONTEND") == "noninteractive" for s in plan.upgrade)
    assert plan.approval == "required"


def test_minimal_plan_defaults(tmp_path: Path) -> None:
    f = tmp_path / "m.yml"
    f.write_text(MINIMAL)
    plan = load_plan(f)
    assert plan.version == 1
    assert plan.guest_state_dir == "/var/db/upgrader"
    assert plan.validate == [] and plan.verify_checks == []
    assert plan.ssh.prod.port == 22 and plan.ssh.prod.user == "root"
    assert plan.ssh.prod.connect_timeout == timedelta(seconds=10)
    step, reboot = plan.upgrade
    assert isinstance(step, RunStep) and step.timeout == timedelta(hours=1) and step.label == "freebsd-update install"
    assert isinstance(reboot, RebootStep) and reboot.timeout == timedelta(minutes=10)
    assert plan.takeover.strategy == "mac_move" and plan.takeover.garp_count == 5
    assert plan.window is None and plan.announce is None and plan.approval == "none"
    assert plan.base_dir == tmp_path
    assert plan.resolve_path("k/id") == tmp_path / "k" / "id"
    assert plan.resolve_path("/etc/ssh/key") == Path("/etc/ssh/key")


def test_checks_and_verify() -> None:
    text = MINIMAL + (
        "validate:\n"
        "  - {name: t, tcp: {port: 22}}\n"
        "  - {name: s, smtp: }\n"
        "  - {name: h, http: {path: /health, body: ok}}\n"
        "  - {name: c, command: {run: 'true'}}\n"
        "verify:\n"
        "  - {name: t, tcp: {port: 22}}\n"
    )
    plan = parse_plan(text, "c.yml")
    assert [c.kind for c in plan.validate] == ["tcp", "smtp", "http", "command"]
    smtp = plan.validate[1]
    assert isinstance(smtp, Check) and smtp.smtp is not None and smtp.smtp.banner == "^220" and smtp.spec is smtp.smtp
    assert plan.validate[2].http is not None and plan.validate[2].http.status == 200
    assert [c.name for c in plan.verify_checks] == ["t"]


def test_window_forms() -> None:
    base = MINIMAL + "window:\n  duration: 90m\n"
    start = parse_plan(base + "  start: 2024-06-02T03:00:00\n  timezone: Europe/Berlin\n", "w.yml").window
    assert start is not None and start.start == datetime(2024, 6, 2, 3, 0) and start.duration == timedelta(minutes=90)
    rrule = parse_plan(base + "  rrule: FREQ=MONTHLY;BYDAY=1SU;BYHOUR=3\n", "w.yml").window
    assert rrule is not None and rrule.rrule
    weekly = parse_plan(base + "  weekly: {weekday: sun, time: 03:30}\n", "w.yml").window
    assert weekly is not None and weekly.weekly is not None and weekly.weekly.time == "03:30"


def test_step_with_run_and_reboot_is_one_error() -> None:
    text = MINIMAL.replace("  - reboot: true\n", "  - reboot: true\n    run: ls\n")
    with pytest.raises(PlanError) as info:
        parse_plan(text, "s.yml")
    assert info.value.problems == ['s.yml:14:5: upgrade[1]: an upgrade step has one of "run", "reboot" or "ansible", not "run" and "reboot"; make one step of each']


# -- resolve_plan_path ------------------------------------------------------------------------


def test_resolve_bare_name_in_cwd_then_playbooks(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "freebsd7.yml").write_text("x")
    (tmp_path / "playbooks" / "other.yaml").write_text("x")
    assert resolve_plan_path("freebsd7.yml", cwd=tmp_path) == tmp_path / "playbooks" / "freebsd7.yml"
    assert resolve_plan_path("freebsd7", cwd=tmp_path) == tmp_path / "playbooks" / "freebsd7.yml"
    assert resolve_plan_path("other", cwd=tmp_path) == tmp_path / "playbooks" / "other.yaml"
    (tmp_path / "freebsd7.yml").write_text("x")  # cwd wins over playbooks/
    assert resolve_plan_path("freebsd7.yml", cwd=tmp_path) == tmp_path / "freebsd7.yml"
    assert resolve_plan_path("freebsd7", cwd=tmp_path) == tmp_path / "freebsd7.yml"


def test_resolve_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    plan = tmp_path / "sub" / "p.yml"
    plan.write_text("x")
    assert resolve_plan_path(str(plan)) == plan
    monkeypatch.chdir(tmp_path)
    assert resolve_plan_path("sub/p.yml") == Path("sub/p.yml")
    assert resolve_plan_path("sub/p") == Path("sub/p.yml")


def test_resolve_not_found(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "freebsd7.yml").write_text("x")
    with pytest.raises(InputError) as info:
        resolve_plan_path("x.yml", cwd=tmp_path)
    assert str(info.value) == 'plan "x.yml" not found (looked in: ., playbooks/)'
    assert info.value.exit_code == 2
    assert info.value.hint and "freebsd7" in info.value.hint
    with pytest.raises(InputError, match="not found"):
        resolve_plan_path("sub/x.yml", cwd=tmp_path)


# -- digest, schema -----------------------------------------------------------------------------


def test_plan_digest() -> None:
    path = PLAYBOOKS / "freebsd7.yml"
    assert plan_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan_digest(str(path)) == plan_digest(path)


def test_schema() -> None:
    schema = plan_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "version", "description", "source", "ssh", "staging", "guest_state_dir", "upgrade", "validate",
        "verify", "sync", "takeover", "window", "announce", "operator", "approval", "keep_old_for", "on_failure",
    }  # fmt: skip
    assert set(schema["required"]) == {"source", "ssh", "staging", "upgrade", "sync", "takeover"}
    keep = schema["properties"]["keep_old_for"]
    assert keep["default"] == "7d" and {s["type"] for s in keep["anyOf"]} == {"string", "integer"}
    port = schema["$defs"]["SshTarget"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)
    assert "base_dir" not in text and "_base_dir" not in text
    hook = schema["$defs"]["OperatorWebhook"]["properties"]
    assert set(hook) == {"url", "secret_env", "secret_file"}  # no inline secret
    assert hook["url"]["format"] == "uri"

    def walk(node: object) -> None:  # every property of every model has a description
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), name
            for value in node.values():
                walk(value)

    walk(schema)


# -- durations and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1h30m", 5400), ("0s", 0)],
)
def test_parse_duration(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2 hours", "h", "-5", "1.5h", True, None, [1], -1])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [(4096, 4096), ("500k", 512000), ("16MiB", 16 << 20), ("1GiB", 1 << 30), ("10MB", 10_000_000), ("1.5k", 1536)],
)
def test_parse_bytesize(text: object, size: int) -> None:
    assert parse_bytesize(text) == size


@pytest.mark.parametrize("text", ["", "lots", "16 parsecs", True, -1, None])
def test_parse_bytesize_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_bytesize(text)
