"""Which HTTP proxy a JWKS or discovery fetch goes through: the standard environment.

    HTTPS_PROXY / https_proxy   proxy for https:// URLs (reached with CONNECT, then TLS to
                                the IdP through the tunnel: the proxy never sees the keys)
    HTTP_PROXY  / http_proxy    proxy for http:// URLs (absolute-form GET to the proxy)
    NO_PROXY    / no_proxy      comma-separated hosts that go direct: `*`, a name (which
                                also matches its subdomains; a leading `.` or `*.` is
                                ignored), an IP address or a CIDR block; ports are ignored

The lowercase name wins when both are set (curl's and Go's rule). Loopback targets
(localhost, 127.0.0.0/8, ::1) always go direct, as in Go's net/http: a proxy cannot reach
this host's loopback, and the dev IdP lives there. Proxy URLs must be `http://host:port`;
credentials in them (`http://user:pass@proxy:3128`) are sent as Basic
Proxy-Authorization and never logged.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from authz_service.tokens.settings import is_loopback_host


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy: where it listens, and the Proxy-Authorization value if it needs one."""

    host: str
    port: int
    authorization: str | None = None

    def __repr__(self) -> str:  # never print credentials
        return f"Proxy({self.host}:{self.port})"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxies for http and https URLs and the NO_PROXY list."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxyConfig:
        """Read the standard variables (raises ValueError naming a variable it cannot use)."""
        env = os.environ if environ is None else environ
        no_proxy = _variable(env, "no_proxy") or ""
        return cls(
            http=_parse_proxy(env, "http_proxy"),
            https=_parse_proxy(env, "https_proxy"),
            no_proxy=tuple(e for e in no_proxy.replace(" ", ",").split(",") if e),
        )

    def for_target(self, scheme: str, host: str) -> Proxy | None:
        """The proxy for a URL with this scheme and host, or None to connect directly."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or is_loopback_host(host) or self.bypasses(host):
            return None
        return proxy

    def bypasses(self, host: str) -> bool:
        """Does NO_PROXY send this host direct?"""
        host = host.lower().rstrip(".").strip("[]")
        return any(_matches(entry, host) for entry in self.no_proxy)


def _variable(env: Mapping[str, str], lower: str) -> str | None:
    for name in (lower, lower.upper()):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _parse_proxy(env: Mapping[str, str], lower: str) -> Proxy | None:
    value = _variable(env, lower)
    if value is None:
        return None
    if "://" not in value:
        value = "http://" + value  # "proxy:3128" is common and means plain HTTP
    parts = urlsplit(value)
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{lower.upper()}: not a valid proxy URL") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{lower.upper()}: only http://host:port proxies are supported")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


def _matches(entry: str, host: str) -> bool:
    entry = entry.strip().lower()
    if entry == "*":
        return True
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        pass
    else:
        try:
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    name = entry.removeprefix("*.").lstrip(".")
    if name.startswith("[") or name.count(":") == 1:
        name = name.rsplit(":", 1)[0].strip("[]")  # "host:port": the port is ignored
    return bool(name) and (host == name or host.endswith("." + name))
