"""A shipped site plan pointed at the lab (`python -m upgrader.lab.labplan`): the site's steps, checks
and sync, the lab's machines; the result loads as a plan and finds its Ansible playbook anywhere."""

from __future__ import annotations

from pathlib import Path

import yaml

from upgrader.lab.labplan import main
from upgrader.plan import load_plan

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def test_the_ansible_plan_on_the_lab_keeps_its_steps_and_takes_the_labs_machines(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "plan.yml"
    assert main([str(PLAYBOOKS / "debian13-ansible.yml"), "--like", str(PLAYBOOKS / "debian13.yml"),
                 "--out", str(out)]) == 0
    plan, site, lab = load_plan(out), load_plan(PLAYBOOKS / "debian13-ansible.yml"), load_plan(PLAYBOOKS / "debian13.yml")
    assert (plan.source, plan.ssh, plan.takeover) == (lab.source, lab.ssh, lab.takeover)
    assert plan.staging.packages == lab.staging.packages and plan.staging.network == "upgstg0"
    assert [s.name for s in plan.upgrade] == [s.name for s in site.upgrade]
    assert [c.name for c in plan.validate] == [c.name for c in site.validate]
    assert plan.sync == site.sync
    raw = yaml.safe_load(out.read_text())
    assert "approval" in yaml.safe_load((PLAYBOOKS / "debian13-ansible.yml").read_text()) and "approval" not in raw
    books = [Path(s["ansible"]["playbook"]) for s in raw["upgrade"] if "ansible" in s]
    assert books and all(b.is_absolute() and b == PLAYBOOKS / "ansible" / "debian13-upgrade.yml" for b in books)


def test_the_site_window_announce_and_operator_are_dropped_and_relative_keys_resolved(tmp_path: Path) -> None:
    """A lab run must not park until the site's window or mail its users/operator; the lab plan's
    relative key paths still point at the same files once the output lives elsewhere."""
    site = yaml.safe_load((PLAYBOOKS / "debian13-ansible.yml").read_text())
    site["window"] = {"start": "Sat 02:00", "length": "2h"}
    site["announce"] = {"to": ["users@example.org"]}
    site["operator"] = {"mail": "ops@example.org"}
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "site.yml").write_text(yaml.safe_dump(site))
    lab = yaml.safe_load((PLAYBOOKS / "debian13.yml").read_text())
    lab["ssh"]["prod"]["key"] = "keys/id_ed25519"
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "lab.yml").write_text(yaml.safe_dump(lab))
    out = tmp_path / "out" / "plan.yml"
    assert main([str(tmp_path / "site" / "site.yml"), "--like", str(tmp_path / "lab" / "lab.yml"), "--out", str(out)]) == 0
    raw = yaml.safe_load(out.read_text())
    assert not {"window", "announce", "operator", "approval"} & set(raw)
    assert raw["ssh"]["prod"]["key"] == str(tmp_path / "lab" / "keys" / "id_ed25519")
    assert raw["ssh"]["staging"]["key"] == lab["ssh"]["staging"]["key"]  # absolute already: kept


def test_a_missing_plan_is_refused_with_its_name(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.yml"), "--like", str(PLAYBOOKS / "debian13.yml"), "--out", str(tmp_path / "o.yml")]) == 2
    assert "nope.yml: no such plan" in capsys.readouterr().err
    assert not (tmp_path / "o.yml").exists()
