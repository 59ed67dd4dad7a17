"""Fixtures: keys generated once per session, a manual clock, and a real local IdP server."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from authz_service.tokens.settings import IssuerSettings
from sidecar_runtime.clock import ManualClock
from tests.authz_service.tokens.factory import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    ec_key,
    ed_key,
    rsa_key,
)


@dataclass
class Keys:
    rsa: SigningKey
    rsa_b: SigningKey
    ps: SigningKey
    ec256: SigningKey
    ec384: SigningKey
    ec521: SigningKey
    ed: SigningKey
    ed_new_name: SigningKey  # Ed25519 key published with the RFC 9864 alg name


@pytest.fixture(scope="session")
def keys() -> Keys:
    ed = ed_key("ed-1", "EdDSA")
    return Keys(
        rsa=rsa_key("rsa-1"),
        rsa_b=rsa_key("rsa-2"),
        ps=rsa_key("ps-1", "PS256"),
        ec256=ec_key("ec-256"),
        ec384=ec_key("ec-384", "ES384", "P-384"),
        ec521=ec_key("ec-521", "ES512", "P-521"),
        ed=ed,
        ed_new_name=SigningKey(ed.jwk, "Ed25519", "ed-2"),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def issuer(**overrides: Any) -> IssuerSettings:
    """IssuerSettings for the test issuer; a jwks_url is the default key source."""
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"],
    }
    if not {"jwks_file", "jwks_url", "discovery"} & overrides.keys():
        values["jwks_url"] = "https://idp.example.test/jwks"
    values.update(overrides)
    return IssuerSettings.model_validate(values)


@dataclass
class Reply:
    """What the local IdP answers on one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0  # seconds between body bytes: one byte at a time when set
    content_length: bool = True  # False: the body ends when the connection closes

    @classmethod
    def json(
        cls, value: Any, *, headers: dict[str, str] | None = None, delay: float = 0.0
    ) -> Reply:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return cls(body=json.dumps(value).encode(), headers=all_headers, delay=delay)


class LocalIdp:
    """A real HTTP(S) server on 127.0.0.1 whose answers a test changes, counting requests."""

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.replies: dict[str, Reply] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        if tls is not None:
            # The handshake runs in each handler thread, not in the accepting one.
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.base = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def set(self, path: str, reply: Reply) -> None:
        with self._lock:
            self.replies[path] = reply

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.hits[handler.path] += 1
            reply = self.replies.get(handler.path, Reply(status=404))
        if reply.delay:
            time.sleep(reply.delay)  # the server is slow, the test is not waiting on it
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if reply.content_length:
                handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            if not reply.trickle:
                handler.wfile.write(reply.body)
            for index in range(len(reply.body) if reply.trickle else 0):
                handler.wfile.write(reply.body[index : index + 1])
                handler.wfile.flush()
                if self._stopping.wait(reply.trickle):
                    return
        except (OSError, ssl.SSLError):
            pass  # the client gave up (timeout tests)

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def idp() -> Iterator[LocalIdp]:
    server = LocalIdp()
    yield server
    server.stop()
