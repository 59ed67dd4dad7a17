"""Compact JWS parsing: string in, header + claims + signing input out, no crypto.

Every cap and shape rule runs here, before a key is looked up or a signature checked, so a
hostile token costs a few string operations (ARCHITECTURE §5a, RFC 8725 §3.2-3.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authz_service.tokens.encoding import DuplicateMemberError, b64url_decode, decode_json_object
from authz_service.tokens.errors import InvalidToken
from authz_service.tokens.settings import TokenLimits


@dataclass(frozen=True, slots=True)
class ParsedJws:
    """A syntactically valid compact JWS whose signature has NOT been checked yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # ASCII(BASE64URL(header) || '.' || BASE64URL(payload)), RFC 7515 §5.2
    signature: bytes
    alg: str
    kid: str | None


def parse_compact(token: str, limits: TokenLimits) -> ParsedJws:
    """Split, size-check and decode a compact JWS; raise InvalidToken for any defect."""
    if len(token) > limits.max_token_bytes:
        raise InvalidToken("oversized")
    if not token.isascii():
        raise InvalidToken("malformed")
    if token[:1] == "{":
        # RFC 7515 §7.2 JSON serialization: unprotected headers and several signatures make
        # it a different, larger attack surface; bearer tokens are always compact.
        raise InvalidToken("jws_json")
    parts = token.split(".")
    if len(parts) != 3:
        # RFC 7516 §7.1: a compact JWE has five parts; we hold no decryption keys.
        raise InvalidToken("jwe" if len(parts) == 5 else "malformed")
    head, body, sig = parts
    _check_sizes(head, body, sig, limits)
    header = _decode_object(head)
    alg, kid = _check_header(header)
    claims = _decode_object(body)
    signature = _decode_signature(sig)
    signing_input = token[: len(head) + 1 + len(body)].encode("ascii")
    return ParsedJws(header, claims, signing_input, signature, alg, kid)


def _check_sizes(head: str, body: str, sig: str, limits: TokenLimits) -> None:
    if (
        len(head) > limits.max_header_bytes
        or len(body) > limits.max_payload_bytes
        or len(sig) > limits.max_signature_bytes
    ):
        raise InvalidToken("oversized")


def _decode_object(segment: str) -> dict[str, Any]:
    try:
        return decode_json_object(segment)
    except DuplicateMemberError:
        raise InvalidToken("duplicate_member") from None
    except ValueError:
        raise InvalidToken("malformed") from None


def _decode_signature(segment: str) -> bytes:
    try:
        signature = b64url_decode(segment)
    except ValueError:
        raise InvalidToken("malformed") from None
    if not signature:
        raise InvalidToken("malformed")  # an empty signature is what alg=none produces
    return signature


def _check_header(header: dict[str, Any]) -> tuple[str, str | None]:
    """Apply the header rules that do not depend on the issuer; return (alg, kid)."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise InvalidToken("malformed")  # RFC 7515 §4.1.1: alg MUST be present
    if "crit" in header:
        # RFC 7515 §4.1.11: a recipient that does not understand a listed extension MUST
        # reject the JWS. We implement no extensions, so every crit is refused.
        raise InvalidToken("crit_unsupported")
    if "b64" in header and header["b64"] is not True:
        # RFC 7797 unencoded payloads change what is signed; refuse rather than misparse.
        raise InvalidToken("b64_unsupported")
    cty = header.get("cty")
    if cty is not None and (not isinstance(cty, str) or media_type(cty) == "jwt"):
        # RFC 8725 §2.7/§3.11: nested JWTs are a substitution vector; we take one layer only.
        raise InvalidToken("nested_jwt" if isinstance(cty, str) else "malformed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("malformed")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise InvalidToken("malformed")
    # jku, x5u, jwk and x5c are deliberately never read: keys come only from the
    # configured JWKS (RFC 8725 §3.10, ARCHITECTURE §5a).
    return alg, kid


def media_type(value: str) -> str:
    """Normalise a typ/cty value: RFC 7515 §4.1.9 says a value without '/' means
    'application/<value>', and media types compare case-insensitively (RFC 2045)."""
    lowered = value.strip().lower()
    return lowered.removeprefix("application/")
