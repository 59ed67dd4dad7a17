"""JWT (compact JWS) verification for the authz sidecar: RFC 7515/7519, RFC 8725, RFC 9068.

Where tokens are verified. Everything here is pure: plain values, a clock and a lookup of
each issuer's current key set in; plain values out. The key sources and the HTTP client
that fetch JWKS are the I/O edges in `authz_service.jwks` (FetchingVerifier wires them in).

    verifier.TokenVerifier(issuers, *, keys, clock, limits, cache_size, stats)
        .verify_now(token) -> Principal | NeedKeys   with the keys known now, no waiting
        .verify_fetched(token) -> Principal          after the caller fetched NeedKeys
        both raise InvalidToken, never anything else
    InvalidToken(reason)          `reason` is one of REASONS (a `Reason` literal)
    IssuerSettings, JwksSettings, TokenLimits          config models
    KeyRing, load_key_ring                             a JWKS as verification keys

Module map: compact (caps and shape, no crypto) -> jwk/algorithms (JWKS to key rings,
alg-to-key binding) -> claims (RFC 7519 checks, Principal) -> cache -> verifier; refetch
(when an unknown kid may refetch) and describe (what a token says, for `explain`) are pure
too; encoding and edwards are leaf helpers. Nothing here imports the I/O edges, so
`authz_service.jwks` builds on this package without an import cycle.
"""

from authz_service.tokens.errors import REASONS, InvalidToken, Reason
from authz_service.tokens.jwk import KeyRing, VerificationKey, load_key_ring
from authz_service.tokens.refetch import RefetchPolicy, UnknownKidGate
from authz_service.tokens.settings import IssuerSettings, JwksSettings, TokenLimits

__all__ = [
    "REASONS",
    "InvalidToken",
    "IssuerSettings",
    "JwksSettings",
    "KeyRing",
    "Reason",
    "RefetchPolicy",
    "TokenLimits",
    "UnknownKidGate",
    "VerificationKey",
    "load_key_ring",
]
