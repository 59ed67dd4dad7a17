"""JWT (compact JWS) verification for the authz sidecar: RFC 7515/7519, RFC 8725, RFC 9068.

    TokenVerifier(issuers, *, clock, limits, cache_size, key_sources, fetcher, instrument,
                  proxies, config_dir, stats)
        await .start() / await .close()
        await .verify(token) -> Principal          raises InvalidToken, never anything else
        .verify_now(token) -> Principal | NeedKeys  the same with the keys known now, no I/O
        await .fetch_keys(need); .verify_fetched(token) -> Principal    then, with the keys
        .key_sources() -> Mapping[issuer, KeySource]
        .issuers_without_keys() -> dict[issuer, reason]      for health
        .reusable_key_sources(issuers, config_dir=) -> dict[issuer, KeySource]
    InvalidToken(reason)          `reason` is one of REASONS (a `Reason` literal)
    IssuerSettings, JwksSettings, TokenLimits          config models
    KeySource  (StaticKeySource, FileKeySource, RemoteKeySource)   where keys come from
    Fetcher    (HttpFetcher, with ProxyConfig)                       how JWKS are fetched

Module map: compact (caps and shape, no crypto) -> keys/algorithms (JWKS to key rings,
alg-to-key binding) -> claims (RFC 7519 checks, Principal) -> cache -> verifier; refetch
(when an unknown kid may refetch) is pure too; sources, remote, fetch, http1 and proxies
are the I/O edges; encoding and edwards are leaf helpers.
"""

from authz_service.tokens.errors import REASONS, InvalidToken, Reason
from authz_service.tokens.fetch import Fetcher, FetchError, FetchResult, HttpFetcher
from authz_service.tokens.jwk import KeyRing, VerificationKey, load_key_ring
from authz_service.tokens.proxies import ProxyConfig
from authz_service.tokens.refetch import RefetchPolicy, UnknownKidGate
from authz_service.tokens.remote import RemoteKeySource
from authz_service.tokens.settings import IssuerSettings, JwksSettings, TokenLimits
from authz_service.tokens.sources import FileKeySource, KeySource, StaticKeySource
from authz_service.tokens.verifier import (
    NeedKeys,
    TokenVerifier,
    VerifierStats,
    build_key_source,
)

__all__ = [
    "REASONS",
    "FetchError",
    "FetchResult",
    "Fetcher",
    "FileKeySource",
    "HttpFetcher",
    "InvalidToken",
    "IssuerSettings",
    "JwksSettings",
    "KeyRing",
    "KeySource",
    "NeedKeys",
    "ProxyConfig",
    "Reason",
    "RefetchPolicy",
    "RemoteKeySource",
    "StaticKeySource",
    "TokenLimits",
    "TokenVerifier",
    "UnknownKidGate",
    "VerificationKey",
    "VerifierStats",
    "build_key_source",
    "load_key_ring",
]
