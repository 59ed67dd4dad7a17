"""Which verifier gets a bearer token: decided from the token's own shape, no oracle.

The rule (docs/introspection.md): a token that parses as compact JWS - three
base64url parts, the first a JSON object with a string `alg` - goes only to the JWT
verifier; anything else goes to introspection when an introspection issuer is
configured. Nothing about the outcome depends on which path ran: a refused token gets
the same generic 401 either way, and no token is ever tried on both (so an attacker
cannot learn which verifier would have accepted it, nor make a JWT cost an HTTP call).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

# A JOSE header is a few hundred bytes; anything bigger is not worth decoding here (the
# JWT verifier applies its own, stricter caps).
MAX_HEADER_CHARS = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def looks_like_jws(token: str) -> bool:
    """True for the compact JWS shape (RFC 7515 §7.1): three base64url parts whose first
    decodes to a JSON object with a string `alg`. Cheap: no signature, no claims."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    header = parts[0]
    if not header or len(header) > MAX_HEADER_CHARS:
        return False
    if not all(_B64URL.fullmatch(part) for part in parts):
        return False
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        value = json.loads(decoded)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("alg"), str)
