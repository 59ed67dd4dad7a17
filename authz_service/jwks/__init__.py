"""Where an issuer's keys come from: the key-source and fetcher ports and their adapters.

The I/O edges of token verification (the pure core is `authz_service.tokens`): key files
read from disk, JWKS and OIDC discovery documents fetched over the network.

    FetchingVerifier  (verification) the pure TokenVerifier and each issuer's KeySource:
                      start/close, fetch what the verifier says it needs, reuse on reload
    KeySource  (StaticKeySource, FileKeySource: sources; RemoteKeySource: remote)
    Fetcher    (HttpFetcher: fetch, over http1, through proxies' ProxyConfig)
"""

from authz_service.jwks.fetch import Fetcher, FetchError, FetchResult, HttpFetcher
from authz_service.jwks.proxies import ProxyConfig
from authz_service.jwks.remote import RemoteKeySource
from authz_service.jwks.sources import FileKeySource, KeySource, StaticKeySource

__all__ = [
    "FetchError",
    "FetchResult",
    "Fetcher",
    "FileKeySource",
    "HttpFetcher",
    "KeySource",
    "ProxyConfig",
    "RemoteKeySource",
    "StaticKeySource",
]
