"""`staging.packages`: the one package proxy an isolated twin may reach.

The staging segment has no route anywhere, yet apt, pkg, freebsd-update and portsnap need a
mirror. The plan names a proxy as the orchestrator reaches it (`proxy: http://127.0.0.1:3142`);
while the twin's steps run, upgrader asks the twin's sshd for a remote forward on the twin's own
127.0.0.1:`port` and joins every connection to it to that proxy from the orchestrator's side (the
Shell port's `forward`). The twin reaches that one proxy and nothing else. Its steps get
`http_proxy`/`HTTP_PROXY`/`UPGRADER_PACKAGE_PROXY` = `twin_url` in their environment (and
`no_proxy`/`NO_PROXY` = the twin's loopback, so its own services are not asked of the proxy)
(docs/packages.md: what each package tool reads).

    proxy = plan.staging.packages          # PackageProxy | None
    proxy.twin_url                         # "http://127.0.0.1:3142": what the twin's tools use
    package_env(plan)                      # {} without a proxy
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from upgrader.ports import RemoteForward

if TYPE_CHECKING:
    from upgrader.plan import Plan

PROXY_ENV = ("http_proxy", "HTTP_PROXY", "UPGRADER_PACKAGE_PROXY")
# the twin's own services (a validation check's `curl http://127.0.0.1/`) are not asked of the proxy
NO_PROXY = "localhost,127.0.0.1,::1"


def _fail(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("plan", message, ctx or None)


def _split(url: str) -> urllib.parse.SplitResult:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise _fail("a URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise _fail("not a valid URL ({why}): {got}", why=str(exc), got=url) from None
    return parts


class PackageProxy(BaseModel):
    """The package proxy (or mirror) the isolated twin may reach: an HTTP proxy as the orchestrator
    reaches it, forwarded over upgrader's own SSH connection to the twin's 127.0.0.1 (a remote
    forward; the twin gets no route). The twin's steps get http_proxy, HTTP_PROXY and
    UPGRADER_PACKAGE_PROXY set to http://127.0.0.1:PORT (docs/packages.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy: StrictStr = Field(
        description='HTTP proxy as reached from the orchestrator, e.g. "http://127.0.0.1:3142" (apt-cacher-ng); '
        "http:// with a host and an optional port (default 80), no user:password@, no path"
    )
    port: StrictInt | None = Field(
        default=None,
        description="port the forward listens on, on the twin's 127.0.0.1 (default: the proxy URL's port)",
        json_schema_extra={"minimum": 1, "maximum": 65535},
    )

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, url: str) -> str:
        parts = _split(url)
        if parts.scheme != "http":
            raise _fail('must be an http:// URL (the forward carries plain TCP to an HTTP proxy), got "{got}"', got=url)
        if not parts.hostname:
            raise _fail('the URL has no host: "{got}"', got=url)
        if "@" in parts.netloc:
            raise _fail("no user:password@ in the URL: the plan must not hold a secret")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _fail('a proxy URL has no path, query or fragment: "{got}"', got=url)
        return url

    @field_validator("port")
    @classmethod
    def _check_port(cls, port: int | None) -> int | None:
        if port is not None and not 1 <= port <= 65535:
            raise _fail("must be between 1 and 65535, got {got}", got=port)
        return port

    # ----------------------------------------------------------------------------- derived

    @property
    def proxy_host(self) -> str:
        """The proxy's host as the orchestrator connects to it (brackets of an IPv6 literal dropped)."""
        return urllib.parse.urlsplit(self.proxy).hostname or ""

    @property
    def proxy_port(self) -> int:
        return urllib.parse.urlsplit(self.proxy).port or 80

    @property
    def twin_port(self) -> int:
        """Where the forward listens on the twin's loopback."""
        return self.port if self.port is not None else self.proxy_port

    @property
    def twin_url(self) -> str:
        """The proxy as the twin's tools reach it: http://127.0.0.1:PORT (for http_proxy, apt's
        Acquire::http::Proxy, pkg's PKG_ENV, Ansible's environment)."""
        return f"http://127.0.0.1:{self.twin_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment the twin's steps get while the forward is open."""
        return {**{name: self.twin_url for name in PROXY_ENV}, "no_proxy": NO_PROXY, "NO_PROXY": NO_PROXY}

    @property
    def forward(self) -> RemoteForward:
        return RemoteForward(listen_port=self.twin_port, host=self.proxy_host, port=self.proxy_port)

    def describe(self) -> str:
        host = self.proxy_host
        shown = f"[{host}]" if _is_v6(host) else host
        return (f"the twin's 127.0.0.1:{self.twin_port} forwarded over upgrader's SSH connection to the package proxy "
                f"{shown}:{self.proxy_port} (as the orchestrator reaches it); its steps get http_proxy={self.twin_url}")


def _is_v6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def package_proxy(plan: "Plan") -> PackageProxy | None:
    return plan.staging.packages


def package_env(plan: "Plan") -> dict[str, str]:
    """http_proxy & co. for a command on the twin ({} when the plan has no package proxy)."""
    proxy = plan.staging.packages
    return proxy.env if proxy is not None else {}
