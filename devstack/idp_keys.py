"""Dev identity-provider keys and token minting (never committed; made on first run).

Files (ARCHITECTURE.md section 4): `rs256.pem` and `ed25519.pem` (PKCS#8 private keys, 0600)
and `jwks.json` (their public JWKs, `kid` = RFC 7638 thumbprint, `alg` set).
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey, RSAKey

# RFC 9864 names Ed25519 explicitly; "EdDSA" is the older, still common name. Both sign
# with the same key.
ED25519_ALGS = ("EdDSA", "Ed25519")


@dataclass(frozen=True)
class IdpKeys:
    rs256: RSAKey
    ed25519: OKPKey
    root: Path

    @property
    def jwks_file(self) -> Path:
        return self.root / "jwks.json"

    def key_for(self, alg: str) -> RSAKey | OKPKey:
        if alg in ED25519_ALGS:
            return self.ed25519
        if alg == "RS256":
            # The published RSA key says alg RS256, so it cannot also verify PS256.
            return self.rs256
        raise ValueError(f"the dev IdP signs RS256, EdDSA and Ed25519, not {alg}")

    def public_jwks(self) -> dict[str, Any]:
        rsa = {**self.rs256.as_dict(private=False), "kid": self.rs256.thumbprint()}
        okp = {**self.ed25519.as_dict(private=False), "kid": self.ed25519.thumbprint()}
        rsa.update(alg="RS256", use="sig")
        okp.update(alg="EdDSA", use="sig")
        return {"keys": [rsa, okp]}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def ensure_idp_keys(root: Path) -> IdpKeys:
    """Load the dev IdP keys from `root`, creating any that are missing."""
    if not root.is_dir():  # leave an existing (possibly read-only) directory alone
        root.mkdir(parents=True)
        os.chmod(root, 0o700)
    rsa_path, ed_path = root / "rs256.pem", root / "ed25519.pem"
    if not rsa_path.is_file():
        _write_private(rsa_path, RSAKey.generate_key(2048).as_pem(private=True))
    if not ed_path.is_file():
        _write_private(ed_path, OKPKey.generate_key("Ed25519").as_pem(private=True))
    keys = IdpKeys(
        rs256=RSAKey.import_key(rsa_path.read_bytes()),
        ed25519=OKPKey.import_key(ed_path.read_bytes()),
        root=root,
    )
    text = json.dumps(keys.public_jwks(), indent=2) + "\n"
    if not keys.jwks_file.is_file() or keys.jwks_file.read_text() != text:
        keys.jwks_file.write_text(text)
    return keys


def mint_token(
    keys: IdpKeys,
    *,
    issuer: str,
    audience: str | Sequence[str],
    subject: str,
    alg: str = "RS256",
    scope: str | None = None,
    roles: Sequence[str] = (),
    ttl: int = 300,
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
    header: Mapping[str, Any] | None = None,
) -> str:
    """Sign an access token with the dev key for `alg`."""
    key = keys.key_for(alg)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }
    if scope:
        claims["scope"] = scope
    if roles:
        claims["roles"] = list(roles)
    claims.update(extra or {})
    protected = {"alg": alg, "typ": "at+jwt", "kid": key.thumbprint(), **(header or {})}
    # joserfc warns on the "EdDSA" name (RFC 9864 prefers "Ed25519"); minting it is the
    # caller's explicit choice, and the warning would only clutter `devstack token`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode(protected, claims, key, algorithms=[alg])
