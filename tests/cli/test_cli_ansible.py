"""`upgrader plan check` of the shipped Ansible plan (playbooks/debian13-ansible.yml): it passes
once the site's key files exist, and a missing playbook is refused like a missing key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_helpers import REPO, run


def _copy(tmp_path: Path) -> Path:
    books = tmp_path / "playbooks"
    books.mkdir()
    shutil.copy(REPO / "playbooks" / "debian13-ansible.yml", books)
    shutil.copytree(REPO / "playbooks" / "ansible", books / "ansible")
    (books / "keys").mkdir()
    for name in ("upgrader_ed25519", "known_hosts"):
        (books / "keys" / name).write_text("")
    return books


def test_the_shipped_ansible_plan_passes_plan_check(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/debian13-ansible.yml")
    assert code == 0 and "3 upgrade step(s)" in out, out


def test_plan_check_refuses_a_missing_playbook(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    books = _copy(tmp_path)
    (books / "ansible" / "debian13-upgrade.yml").unlink()
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/debian13-ansible.yml")
    assert code == 2
    assert f"upgrade[0].ansible.playbook: {books}/ansible/debian13-upgrade.yml: no such file" in out
    assert f"upgrade[2].ansible.playbook: {books}/ansible/debian13-upgrade.yml: no such file" in out


def test_plan_check_refuses_an_ansible_step_without_a_pinned_twin(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    books = _copy(tmp_path)
    plan = books / "debian13-ansible.yml"
    text = plan.read_text()
    staging = text.index("  staging:\n")
    plan.write_text(text[:staging] + text[staging:].replace("    known_hosts: keys/known_hosts\n", "", 1))
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/debian13-ansible.yml")
    assert code == 2 and "upgrade[0].ansible: an `ansible:` step needs ssh.staging.known_hosts" in out, out
