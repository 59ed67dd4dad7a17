"""JWT (compact JWS) verification for the authz sidecar: RFC 7515/7519, RFC 8725, RFC 9068.

Where tokens are verified. Everything here is pure (plain values and a clock in, plain
values out) except `verifier`, which wires each issuer to its key source; the key sources
and the HTTP client that fetch JWKS are the I/O edges in `authz_service.jwks`.

    verifier.TokenVerifier(issuers, *, clock, limits, cache_size, key_sources, fetcher,
                           instrument, proxies, config_dir, stats)
        await .start() / await .close()
        await .verify(token) -> Principal          raises InvalidToken, never anything else
        .verify_now(token) -> Principal | NeedKeys  the same with the keys known now, no I/O
        await .fetch_keys(need); .verify_fetched(token) -> Principal    then, with the keys
        .key_sources() -> Mapping[issuer, KeySource]
        .issuers_without_keys() -> dict[issuer, reason]      for health
        .reusable_key_sources(issuers, config_dir=) -> dict[issuer, KeySource]
    InvalidToken(reason)          `reason` is one of REASONS (a `Reason` literal)
    IssuerSettings, JwksSettings, TokenLimits          config models
    KeyRing, load_key_ring                             a JWKS as verification keys

Module map: compact (caps and shape, no crypto) -> jwk/algorithms (JWKS to key rings,
alg-to-key binding) -> claims (RFC 7519 checks, Principal) -> cache -> verifier; refetch
(when an unknown kid may refetch) and describe (what a token says, for `explain`) are pure
too; encoding and edwards are leaf helpers. This package's own names import none of the
I/O edges, so `authz_service.jwks` can build on them without an import cycle.
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
