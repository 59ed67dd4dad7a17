"""What the edge refuses or strips before anyone decides on a request (docs/edge.md).

Two pieces of devstack.envoy_config's bootstrap live here, because each is a list or a
program of its own rather than plumbing:

- `SPOOFABLE_REQUEST_HEADERS`: request headers that some upstream framework believes
  (for the client's address, the method, the URL, the host, the scheme, a client
  certificate or an identity asserted by an auth proxy), stripped by the first HTTP
  filter so neither ext_authz nor the upstream ever sees a client's copy.
- `request_guard_lua(...)`: the Lua program of the request guard filter, which answers
  431 when a request leaves ext_authz no room for its identity headers, and 400 for two
  Host headers (HTTP/1.1).
"""

from __future__ import annotations

import re

# Each entry is a lower-case header name, or a prefix ending in "*". Grouped by what an
# upstream framework would wrongly believe; the sources are the frameworks' own docs.
SPOOFABLE_GROUPS: dict[str, tuple[str, ...]] = {
    # Method overrides (Express method-override, Rails/Rack, Spring HiddenHttpMethodFilter
    # variants, ASP.NET, Google APIs): authz decided on the real method, so never these.
    "method": (
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
    ),
    # The client's address, as CDNs and load balancers assert it (Akamai True-Client-IP,
    # Cloudflare CF-Connecting-IP, Fastly, nginx realip, Azure, App Engine, RFC 7239).
    # Envoy's x-forwarded-for is rewritten to the TCP peer separately.
    "client address": (
        "forwarded",
        "x-forwarded",
        "forwarded-for",
        "x-real-ip",
        "client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "cf-connecting-ipv6",
        "cf-pseudo-ipv4",
        "fastly-client-ip",
        "x-proxyuser-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-original-forwarded-for",
        "x-azure-clientip",
        "x-azure-socketip",
        "x-appengine-user-ip",
    ),
    # Host, URL, path, port and scheme overrides (Symfony/Laravel trusted proxies, IIS
    # URL Rewrite and ARR, Django USE_X_FORWARDED_HOST, Spring ForwardedHeaderFilter,
    # Traefik, nginx auth_request). x-forwarded-proto is Envoy's own at the edge.
    "host and url": (
        "x-forwarded-host",
        "x-forwarded-server",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-path",
        "x-forwarded-uri",
        "x-forwarded-url",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-forwarded-protocol",
        "x-url-scheme",
        "x-scheme",
        "front-end-https",
        "x-arr-ssl",
        "x-host",
        "x-original-host",
        "x-original-uri",
        "x-original-url",
        "x-original-path",
        "x-rewrite-url",
        "x-http-destinationurl",
        "x-proxy-url",
    ),
    # Client certificates as TLS-terminating proxies pass them on (nginx, HAProxy, IIS
    # ARR, Traefik, AWS ALB mTLS). x-forwarded-client-cert is Envoy's own: the connection
    # manager's forward_client_cert_details SANITIZE removes a client's copy.
    "client certificate": (
        "x-client-cert",
        "x-client-certificate",
        "x-ssl-cert",
        "x-ssl-client-*",
        "ssl-client-*",
        "x-client-verify",
        "x-client-dn",
        "x-arr-clientcert",
        "x-forwarded-tls-client-cert",
        "x-forwarded-tls-client-cert-info",
        "x-amzn-mtls-clientcert*",
    ),
    # Identity asserted by other auth proxies (oauth2-proxy, Grafana auth proxy,
    # Kubernetes front proxy, Kong, AWS ALB OIDC, Azure Easy Auth, Google IAP,
    # Cloudflare Access): an upstream built behind one of them trusts these outright.
    "proxy identity": (
        "remote-user",
        "x-remote-user",
        "x-remote-group",
        "x-remote-extra-*",
        "x-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-auth-request-*",
        "x-webauth-*",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-authenticated-scope",
        "x-consumer-*",
        "x-credential-identifier",
        "x-userinfo",
        "x-amzn-oidc-*",
        "x-ms-client-principal*",
        "x-goog-authenticated-user-*",
        "x-goog-iap-jwt-assertion",
        "cf-access-jwt-assertion",
        "cf-access-authenticated-user-email",
    ),
    # Framework-internal headers a client must never send (Next.js middleware bypass,
    # CVE-2025-29927; its route-matches cache poisoning, CVE-2024-46982).
    "framework internal": (
        "x-middleware-subrequest",
        "x-now-route-matches",
    ),
}
SPOOFABLE_REQUEST_HEADERS: tuple[str, ...] = tuple(
    name for group in SPOOFABLE_GROUPS.values() for name in group
)

# Headers the edge itself depends on: a spoofable-header list that names one is a mistake.
ESSENTIAL_REQUEST_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "content-length",
        "content-type",
        "transfer-encoding",
        "te",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-client-cert",
        "traceparent",
        "tracestate",
    }
)
_NAME = re.compile(r"^[a-z0-9!#$%&'+.^_`|~-]+\*?$")


def check_spoofable(names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first entry that is not a usable name or prefix."""
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"spoofable_request_headers: {name!r} is not a lower-case name")
        bare = name.rstrip("*")
        if not bare or any(
            e.startswith(bare) if name.endswith("*") else e == bare
            for e in ESSENTIAL_REQUEST_HEADERS
        ):
            raise ValueError(
                f"spoofable_request_headers: {name!r} would strip a header the edge needs"
            )


def removal(name: str) -> dict[str, object]:
    """A header_mutation request mutation removing `name` (or every name with its prefix)."""
    if name.endswith("*"):
        return {"remove_on_match": {"key_matcher": {"prefix": name[:-1]}}}
    return {"remove": name}


# --- the request guard (Lua) -----------------------------------------------------------------

_GUARD = """\
-- generated by devstack.edge_hygiene: the edge's own header limits and Host checks.
-- Counted as ext_authz counts after its mutations (every entry, pseudo-headers included,
-- name and value bytes), so an allow always has room for the identity headers.
local MAX_COUNT = {max_count}
local MAX_BYTES = {max_bytes}

local function refuse(handle, status, err)
  local id = handle:headers():get("x-request-id") or ""
  handle:respond(
    {{[":status"] = status, ["content-type"] = "application/json"}},
    '{{"error":"' .. err .. '","request_id":"' .. id .. '"}}')
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local count, bytes = 0, 0
  for name, value in pairs(headers) do
    count = count + 1
    bytes = bytes + #name + #value
  end
  if count > MAX_COUNT or bytes > MAX_BYTES then
    refuse(handle, "431", "request_header_fields_too_large")
    return
  end
  -- HTTP/1.1: Envoy joins two Host lines into one :authority with a comma, which no
  -- valid authority has (RFC 9112 section 3.2: more than one Host is a 400).
  local authority = headers:get(":authority") or ""
  if authority:find(",", 1, true) then
    refuse(handle, "400", "invalid_request")
  end
  -- HTTP/2: a host field beside :authority never gets here; Envoy's codec drops it.
end
"""


def request_guard_lua(*, max_count: int, max_bytes: int) -> str:
    """The request guard's Lua source for these limits."""
    return _GUARD.format(max_count=max_count, max_bytes=max_bytes)
