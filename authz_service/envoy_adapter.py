"""Envoy's ext_authz messages (xds-protos) in and out; with servicer.py, which decodes the
CheckRequest and registers the service, the only modules that touch Envoy's types.

`read_check_request` turns a `CheckRequest` into plain values; `ResponseBuilder` turns a
`Decision` into a `CheckResponse`. Denials carry the RFC 6750 challenge and a JSON body
with only the public error code and the request id; allows inject identity headers
(overwriting and removing any client-sent copies) and identity dynamic metadata, which
Envoy publishes under the `envoy.filters.http.ext_authz` namespace for the rate limiter.
Every answer carries the decision id (header `x-decision-id` and metadata `decision_id`),
so Envoy's access log, the audit line and the trace can be joined on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2, status_pb2

from authz_service.body import BodyVerdict, verdict_problem
from authz_service.body.problem import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from authz_service.body.verdict import BODY_REASONS
from authz_service.identity_encoding import encode_item, encode_list
from authz_service.pipeline import Decision
from authz_service.policy import RequestFacts
from authz_service.principal import Principal
from authz_service.settings import IdentitySettings

# Never handed to CEL conditions or the audit log.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
# Allow templates by value (see ResponseBuilder._allow): a hot set of identities fits.
_MAX_TEMPLATES = 4_096
_TemplateKey = tuple[str, str, bool, str, tuple[Any, ...] | None]
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)
_UNAUTHENTICATED = status_pb2.Status(code=code_pb2.UNAUTHENTICATED)
_PERMISSION_DENIED = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
_UNAVAILABLE = status_pb2.Status(code=code_pb2.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class CheckInputs:
    facts: RequestFacts
    authorization: tuple[str, ...]
    cookie: str


def read_check_request(request: external_auth_pb2.CheckRequest) -> CheckInputs:
    """Plain values out of a CheckRequest, with credential headers set aside.

    Envoy sends the request headers either as a map (`headers`, the project's config:
    lower-case names, repeated headers joined with ',') or, with `encode_raw_headers`, as
    a list of raw values (`header_map`). The map is used as it is, credential headers
    deleted from the request's own copy: no per-header Python work on the hot path.
    """
    attrs = request.attributes
    http = attrs.request.http
    raw = http.header_map.headers
    headers: Any
    if raw:
        headers, authorization = _from_raw_headers(raw)
    else:
        headers = http.headers
        auth = headers.get("authorization")
        authorization = () if auth is None else (auth,)
    cookie = headers.get("cookie", "")
    for name in CREDENTIAL_HEADERS:
        if name in headers:
            del headers[name]
    facts = RequestFacts(
        method=http.method,
        raw_path=http.path,
        host=http.host,
        headers=headers,
        client_address=attrs.source.address.socket_address.address,
        peer_principal=attrs.source.principal,
        peer_certificate=attrs.source.certificate,
        # x-request-id is what Envoy's access log and the upstream see; http.id is only
        # Envoy's internal stream id, the fallback when the header is absent.
        request_id=headers.get("x-request-id") or http.id,
        # Sent only on routes whose rule has a body schema (`pack_as_bytes`: raw_body).
        raw_body=http.raw_body or http.body.encode(),
        context=attrs.context_extensions,
        route_metadata=_namespaces(request.attributes.route_metadata_context),
        dynamic_metadata=_namespaces(request.attributes.metadata_context),
    )
    return CheckInputs(facts, authorization, cookie)


def _namespaces(metadata: Any) -> Mapping[str, Any]:
    """Envoy Metadata (`filter_metadata`: namespace -> Struct) as plain values; the
    common case, none at all, costs one length check."""
    fields = metadata.filter_metadata
    if not fields:
        return _NO_METADATA
    return {name: MessageToDict(struct) for name, struct in fields.items()}


def _from_raw_headers(raw: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    # encode_raw_headers: repeated headers arrive as separate entries; keep them apart.
    headers: dict[str, str] = {}
    auth_values = []
    for hv in raw:
        name = hv.key.lower()
        value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        if name == "authorization":
            auth_values.append(value)
        if name in headers:
            # Cookie lines join with "; " (RFC 9113 section 8.2.3), others with ",".
            value = f"{headers[name]}{'; ' if name == 'cookie' else ','}{value}"
        headers[name] = value
    return headers, tuple(auth_values)


def header_safe(value: str) -> str:
    """Percent-encode anything outside printable ASCII (the challenge's configured scopes;
    identity headers use `identity_encoding`, which is exact)."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _hashable(value: Any) -> Any:
    # Only strings reach the metadata (see _metadata); anything else keys as "not a string".
    return value if isinstance(value, str) else None


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dot path in the claims, or None."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


class ResponseBuilder:
    """Builds CheckResponses for one identity config; built once per config load."""

    def __init__(self, identity: IdentitySettings) -> None:
        self._identity = identity
        self._names = identity.headers
        self._decision_header = identity.decision_id_header
        self._allow_templates: dict[_TemplateKey, external_auth_pb2.CheckResponse] = {}
        realm = f'Bearer realm="{identity.realm}"'
        self._challenge_plain = realm
        self._challenge_invalid = (
            f'{realm}, error="invalid_token", error_description="The access token is invalid"'
        )
        self._challenge_request = f'{realm}, error="invalid_request"'

    def build(
        self, decision: Decision, request_id: str, decision_id: str
    ) -> external_auth_pb2.CheckResponse:
        if decision.lets_through:  # an allow, or a deny under dry_run
            return self._allow(decision, decision_id)
        return self._deny(decision, request_id, decision_id)

    def wire(self, decision: Decision, request_id: str, decision_id: str) -> bytes:
        """`build(...)` serialized, as the servicer sends it."""
        wire: bytes = self.build(decision, request_id, decision_id).SerializeToString()
        return wire

    def _allow(self, decision: Decision, decision_id: str) -> external_auth_pb2.CheckResponse:
        # Everything but the decision id depends only on the values below: built once
        # per identity and rule, then copied. Building it costs ~62 µs (the structured
        # field encoding and ~10 protobuf fields), the copy ~8 µs (timeit, this machine,
        # 2026-12-05); per allow that was ~4% of the whole edge's CPU (make bench,
        # edgeguard-uvloop: authz 611 µs without this cache against 378 µs before it
        # was taken out, docs/benchmarks.md for the current figures).
        key = self._template_key(decision)
        template = self._allow_templates.get(key)
        if template is None:
            template = self._allow_template(decision)
            if len(self._allow_templates) >= _MAX_TEMPLATES:
                self._allow_templates.clear()  # a flood of identities costs a rebuild each
            self._allow_templates[key] = template
        response = external_auth_pb2.CheckResponse()
        response.CopyFrom(template)
        response.ok_response.headers.add(
            header=base_pb2.HeaderValue(key=self._decision_header, value=decision_id),
            append_action=_OVERWRITE,
        )
        response.dynamic_metadata.fields["decision_id"].string_value = decision_id
        return response

    def _template_key(self, decision: Decision) -> _TemplateKey:
        """Every value an allow's template is built from (by value: equal keys build
        equal templates, whichever Principal object they came from)."""
        p = decision.principal
        if p is None:
            return (decision.rule, decision.rule_set, decision.enforced, decision.reason, None)
        claims = p.claims
        identity = (
            p.subject,
            p.issuer,
            p.scopes,
            p.roles,
            p.client_id,
            _hashable(claim_at(claims, self._identity.tenant_claim)),
            _hashable(claim_at(claims, self._identity.plan_claim)),
        )
        return (decision.rule, decision.rule_set, decision.enforced, decision.reason, identity)

    def _allow_template(self, decision: Decision) -> external_auth_pb2.CheckResponse:
        ok = external_auth_pb2.OkHttpResponse()
        values = self._identity_values(decision.principal)
        for name in self._names.all():
            value = values.get(name)
            if value is not None:
                ok.headers.add(
                    header=base_pb2.HeaderValue(key=name, value=value),
                    append_action=_OVERWRITE,
                )
            else:
                # Also what a client sent: only the sidecar's values reach the upstream.
                ok.headers_to_remove.append(name)
        response = external_auth_pb2.CheckResponse(status=_OK_STATUS, ok_response=ok)
        response.dynamic_metadata.CopyFrom(self._metadata(decision))
        return response

    def _identity_values(self, principal: Principal | None) -> dict[str, str | None]:
        """Header values in the exact encoding of docs/identity-headers.md; None: the
        header is removed (no client id; no scopes or roles, the empty list)."""
        if principal is None:
            return {}
        n = self._names
        client_id = principal.client_id
        return {
            n.subject: encode_item(principal.subject),
            n.issuer: encode_item(principal.issuer),
            n.scopes: encode_list(sorted(principal.scopes)),
            n.roles: encode_list(sorted(principal.roles)),
            n.client_id: None if client_id is None else encode_item(client_id),
        }

    def _metadata(self, decision: Decision) -> struct_pb2.Struct:
        meta: dict[str, str] = {"rule": decision.rule}
        if decision.rule_set:
            meta["rule_set"] = decision.rule_set
        if not decision.enforced:
            meta["dry_run_deny"] = decision.reason  # what enforcing would have answered
        p = decision.principal
        if p is not None:
            meta["subject"] = p.subject
            meta["issuer"] = p.issuer
            for key, value in (
                ("client_id", p.client_id),
                ("tenant", claim_at(p.claims, self._identity.tenant_claim)),
                ("plan", claim_at(p.claims, self._identity.plan_claim)),
            ):
                if isinstance(value, str) and value:
                    meta[key] = value
        out = struct_pb2.Struct()
        out.update(meta)
        return out

    def _deny(
        self, decision: Decision, request_id: str, decision_id: str
    ) -> external_auth_pb2.CheckResponse:
        if decision.reason in BODY_REASONS:
            # RFC 9457: where the body breaks the schema, by pointer, never by value.
            content_type = PROBLEM_CONTENT_TYPE
            refusal = BodyVerdict(decision.reason, decision.detail, decision.violations)
            body = verdict_problem(refusal, request_id).decode("ascii")
            challenge = ""  # the credentials were fine; the body was not
        else:
            content_type = "application/json"
            body = json.dumps({"error": decision.error, "request_id": request_id})
            challenge = self._challenge(decision)
        denied = external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status), body=body
        )
        headers = [
            ("content-type", content_type),
            ("cache-control", "no-store"),
            (self._decision_header, decision_id),
        ]
        if challenge:
            headers.append(("www-authenticate", challenge))
        for key, value in headers:
            denied.headers.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
                )
            )
        if decision.status == 401:
            grpc_status = _UNAUTHENTICATED
        elif decision.status >= 500:
            grpc_status = _UNAVAILABLE
        else:
            grpc_status = _PERMISSION_DENIED
        response = external_auth_pb2.CheckResponse(status=grpc_status, denied_response=denied)
        meta = {"decision_id": decision_id}
        if decision.rule:
            meta["rule"] = decision.rule
        response.dynamic_metadata.update(meta)
        return response

    def _challenge(self, decision: Decision) -> str:
        if decision.status == 401:
            return (
                self._challenge_invalid
                if decision.error == "invalid_token"
                else self._challenge_plain
            )
        if decision.error == "insufficient_scope":
            # RFC 6749 scope tokens exclude `"` and `\`; escape them anyway so config can't
            # break the quoting.
            scope = header_safe(" ".join(decision.required_scopes))
            scope = scope.replace('"', "%22").replace("\\", "%5C")
            return f'{self._challenge_plain}, error="insufficient_scope", scope="{scope}"'
        if decision.status == 400:
            return self._challenge_request
        return ""
