"""OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens.

Pure core (no I/O): routing.looks_like_jws decides which verifier a token goes to;
verifier.IntrospectionVerifier answers from a bounded cache or says NeedIntrospection;
answer.py reads an endpoint's answer. The edge: fetching.FetchingIntrospectionVerifier
(single flight, breaker, in-flight cap) over http_client.HttpIntrospectionEndpoint.
See docs/introspection.md.
"""

from __future__ import annotations

from authz_service.introspection.errors import IntrospectionRefused, Reason
from authz_service.introspection.routing import looks_like_jws
from authz_service.introspection.settings import IntrospectionIssuerSettings
from authz_service.introspection.verifier import (
    IntrospectionStats,
    IntrospectionVerifier,
    NeedIntrospection,
)

__all__ = [
    "IntrospectionIssuerSettings",
    "IntrospectionRefused",
    "IntrospectionStats",
    "IntrospectionVerifier",
    "NeedIntrospection",
    "Reason",
    "looks_like_jws",
]
