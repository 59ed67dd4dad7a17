"""The dev identity provider: serves the JWKS and the OIDC discovery document.

    GET /.well-known/openid-configuration   issuer, jwks_uri, supported algorithms
    GET /jwks.json                           the public keys (Cache-Control: max-age=300)

Tokens are minted offline with `python -m devstack token ...` using the same keys; this
server never hands out private material.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from devstack.http_thread import BackgroundHttpServer
from devstack.idp_keys import IdpKeys


def discovery_document(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256", "EdDSA", "Ed25519"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }


class IdpServer(BackgroundHttpServer):
    """The IdP's two documents on a background thread; `start()` returns the bound port."""

    def __init__(
        self,
        keys: IdpKeys,
        *,
        issuer: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8082,
    ) -> None:
        """`issuer=None` means `http://HOST:PORT` of the bound socket (handy with port 0)."""
        routes: dict[str, bytes] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = routes.get(self.path.partition("?")[0])
                if body is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "public, max-age=300")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the stack prints its own summary

        super().__init__(Handler, host=host, port=port)
        self.issuer = issuer or f"http://{host}:{self.port}"
        routes["/.well-known/openid-configuration"] = json.dumps(
            discovery_document(self.issuer)
        ).encode()
        routes["/jwks.json"] = json.dumps(keys.public_jwks()).encode()
