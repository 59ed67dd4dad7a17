"""Test-only token minting: keys generated at test time, tokens built byte by byte.

Tokens are assembled by hand (not with a JWT library) so tests can produce exactly the
malformed shapes the verifier must refuse: duplicate members, odd headers, raw JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

from authz_service.tokens.algorithms import ALGORITHMS
from authz_service.tokens.encoding import b64url_encode

ISSUER = "https://idp.example.test"
AUDIENCE = "api://demo"
NOW = 1_700_000_000.0  # ManualClock's default start


@dataclass
class SigningKey:
    """A private key plus the JWK members its public half is published with."""

    jwk: RSAKey | ECKey | OKPKey
    alg: str
    kid: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self, **members: Any) -> dict[str, Any]:
        """The public JWK, with kid/alg and any overriding members (None removes one)."""
        out: dict[str, Any] = dict(self.jwk.as_dict(private=False))
        out.pop("kid", None)
        if self.kid is not None:
            out["kid"] = self.kid
        out["alg"] = self.alg
        out.update(self.extra)
        out.update(members)
        return {k: v for k, v in out.items() if v is not None}


def rsa_key(kid: str | None = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(RSAKey.generate_key(bits), alg, kid)


def ec_key(kid: str | None = "ec-1", alg: str = "ES256", crv: str = "P-256") -> SigningKey:
    return SigningKey(ECKey.generate_key(crv), alg, kid)


def ed_key(kid: str | None = "ed-1", alg: str = "EdDSA") -> SigningKey:
    return SigningKey(OKPKey.generate_key("Ed25519"), alg, kid)


def jwks(*keys: SigningKey | dict[str, Any]) -> dict[str, Any]:
    return {"keys": [k.public() if isinstance(k, SigningKey) else k for k in keys]}


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claims set for ISSUER/AUDIENCE at NOW; None removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-123",
        "aud": AUDIENCE,
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 10,
        "scope": "users:read users:write",
        "roles": ["admin"],
        "client_id": "demo-client",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def encode_json(value: Any) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def mint(
    key: SigningKey | None,
    payload: dict[str, Any] | None = None,
    *,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    raw_header: str | None = None,
    raw_payload: str | None = None,
    hmac_secret: bytes | None = None,
) -> str:
    """Build and sign a compact JWS. Raw JSON text, if given, is used byte for byte."""
    use_alg = alg or (key.alg if key else "none")
    head: dict[str, Any] = {"alg": use_alg, "typ": "JWT"}
    if key is not None and key.kid is not None:
        head["kid"] = key.kid
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    h = b64url_encode(raw_header.encode()) if raw_header is not None else encode_json(head)
    body = raw_payload.encode() if raw_payload is not None else None
    p = b64url_encode(body) if body is not None else encode_json(payload or claims())
    signing_input = f"{h}.{p}".encode()
    if hmac_secret is not None:
        sig = hmac.new(hmac_secret, signing_input, hashlib.sha256).digest()
    elif key is None:
        sig = b""
    else:
        sig = ALGORITHMS[use_alg].model.sign(signing_input, key.jwk)
    return f"{h}.{p}.{b64url_encode(sig)}"
