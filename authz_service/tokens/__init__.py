"""JWT (compact JWS) verification for the authz sidecar: RFC 7519, RFC 8725, RFC 9068.

Public interface:

    TokenVerifier(issuers, *, clock, limits, cache_size, key_sources, fetcher, config_dir)
        .start() / .close() / .verify(token) -> Principal / .key_sources()
    InvalidToken(reason)          the only exception verify() raises; REASONS lists the codes
    IssuerSettings, JwksSettings, TokenLimits   config models
    KeySource, Fetcher            ports (with StaticKeySource, FileKeySource, RemoteKeySource,
                                  UrllibFetcher as adapters)
"""

from authz_service.tokens.errors import REASONS, InvalidToken, Reason
from authz_service.tokens.fetch import Fetcher, FetchError, FetchResult, UrllibFetcher
from authz_service.tokens.keys import KeyRing, VerificationKey, load_key_ring
from authz_service.tokens.remote import RemoteKeySource
from authz_service.tokens.settings import IssuerSettings, JwksSettings, TokenLimits
from authz_service.tokens.sources import FileKeySource, KeySource, StaticKeySource
from authz_service.tokens.verifier import TokenVerifier, build_key_source

__all__ = [
    "REASONS",
    "FetchError",
    "FetchResult",
    "Fetcher",
    "FileKeySource",
    "InvalidToken",
    "IssuerSettings",
    "JwksSettings",
    "KeyRing",
    "KeySource",
    "Reason",
    "RemoteKeySource",
    "StaticKeySource",
    "TokenLimits",
    "TokenVerifier",
    "UrllibFetcher",
    "VerificationKey",
    "build_key_source",
    "load_key_ring",
]
