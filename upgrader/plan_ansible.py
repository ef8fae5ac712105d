"""The `ansible:` upgrade step's settings: an Ansible playbook run against the twin through the
plan's own pinned SSH path (ssh.staging: host, port, user, key, known_hosts, proxy_command).

    upgrade:
      - name: Debian 12 -> 13
        ansible:
          playbook: ansible/debian13-upgrade.yml   # relative to the plan file
          extra_vars: {target_release: trixie}
          tags: [upgrade]
        timeout: 2h
      - reboot: true

The step model itself (`AnsibleStep`: name, timeout, on_failure, checkpoint) is in plan.py beside
`run` and `reboot`; this module holds the playbook's mapping and its checks, and the names
upgrader gives the playbook (`RESERVED_PREFIX` variables, the inventory's host name).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = ["AnsiblePlaybook", "RESERVED_PREFIX", "PROXY_VAR"]

RESERVED_PREFIX = "upgrader_"  # extra vars upgrader itself passes; a plan may not set them
PROXY_VAR = "upgrader_package_proxy"  # the twin's URL of the plan's package proxy, when there is one
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _problem(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("plan", message, ctx or None)


def _check_var_names(value: dict[str, Any]) -> dict[str, Any]:
    for name in value:
        if not _VAR_NAME.match(name):
            raise _problem('"{name}" is not an Ansible variable name (letters, digits and _, not starting with a digit)',
                           name=name)
        if name.startswith(RESERVED_PREFIX):
            raise _problem('"{name}": variables starting with "{prefix}" are upgrader\'s own (e.g. {proxy}); rename it',
                           name=name, prefix=RESERVED_PREFIX, proxy=PROXY_VAR)
    return value


def _check_names(value: list[str]) -> list[str]:
    for name in value:
        if not _NAME.match(name):
            raise _problem('"{name}": expected a name of letters, digits, _ . and - (no spaces or commas)', name=name)
    return value


def _check_playbook(value: str) -> str:
    if not value.strip():
        raise _problem("must not be empty")
    if not value.endswith((".yml", ".yaml")):
        raise _problem('expected an Ansible playbook file (.yml or .yaml), got "{got}"', got=value)
    return value


Names = Annotated[list[StrictStr], AfterValidator(_check_names)]


class AnsiblePlaybook(BaseModel):
    """An Ansible playbook run with ansible-playbook against the twin, over the plan's pinned SSH
    path to it (ssh.staging). The inventory is made for the run: one host, named after
    source.domain, with the staging target's address, port, user and key; host keys are checked
    against ssh.staging.known_hosts only. Needs ansible-core on the controller
    (`pip install 'upgrader[ansible]'`)."""

    model_config = ConfigDict(extra="forbid")

    playbook: Annotated[StrictStr, AfterValidator(_check_playbook)] = Field(
        description="the playbook file; a relative path is relative to the plan file "
                    "(`plan check` refuses a missing one). Its `hosts:` may be `all`, the host's name "
                    "(source.domain) or one of `groups`")
    extra_vars: Annotated[dict[StrictStr, JsonValue], AfterValidator(_check_var_names),
                          WithJsonSchema({"type": "object", "propertyNames": {"pattern": _VAR_NAME.pattern},
                                          "additionalProperties": {"description": "any YAML value but a date"}})] = Field(
        default={},
        description="variables passed with --extra-vars (highest precedence). upgrader adds its own, "
                    f"named {RESERVED_PREFIX}*: `{PROXY_VAR}` (the package proxy URL the twin uses, when the "
                    "plan has a package proxy), `upgrader_run_id`")
    tags: Names = Field(default=[], description="run only the tasks with these tags (--tags)")
    skip_tags: Names = Field(default=[], description="skip the tasks with these tags (--skip-tags)")
    groups: Names = Field(default=[], description="inventory groups the twin is put in, for playbooks whose "
                                                  "`hosts:` names a group")
