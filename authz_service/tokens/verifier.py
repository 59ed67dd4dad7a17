"""TokenVerifier: a bearer token string in, a Principal or InvalidToken out.

The pipeline reads like RFC 8725 §3: caps and shape (compact.py) -> issuer chosen by the
unverified `iss` -> `alg` against that issuer's allow-list -> `typ` -> key by `kid` and
key type -> one signature check -> claims (claims.py) -> Principal, cached until it
expires or its key leaves the JWKS.

Synchronous and without I/O, like h11: it reads each issuer's current key set through a
lookup it is given (`keys(issuer) -> KeyRing | None`). When the issuer has no key set yet,
or the token's kid is not in it, `verify_now` answers `NeedKeys(issuer, kid)` instead of
waiting; the caller has the keys fetched (authz_service.jwks.verification, on the event
loop, at most the issuer's `check_wait_seconds`) and calls `verify_fetched`, which decides
with whatever keys there are then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from joserfc.jwa import JWSAlgModel

from authz_service.principal import Principal
from authz_service.tokens.algorithms import ALGORITHMS, allow_list
from authz_service.tokens.cache import CachedToken, VerifiedTokenCache
from authz_service.tokens.claims import ClaimRules, build_principal, check_typ
from authz_service.tokens.compact import ParsedJws, parse_compact
from authz_service.tokens.errors import InvalidToken, log_unexpected
from authz_service.tokens.jwk import KeyRing, VerificationKey
from authz_service.tokens.settings import IssuerSettings, TokenLimits
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NeedKeys:
    """The token's issuer has no key set yet, or the set lacks the token's kid: fetch its
    keys, waiting `wait_s` at most, then `verify_fetched`."""

    issuer: str
    kid: str | None
    wait_s: float  # the issuer's jwks.check_wait_seconds


@dataclass(slots=True)
class VerifierStats:
    """Plain counters a metrics layer can read; shared across reloads by the caller."""

    cache_hits: int = 0
    cache_misses: int = 0


KeyLookup = Callable[[str], KeyRing | None]  # issuer -> its key set now, None if none yet


@dataclass(frozen=True, slots=True)
class _Issuer:
    rules: ClaimRules
    algorithms: frozenset[str]
    check_wait: float  # the longest one Check waits for this issuer's keys


class TokenVerifier:
    """Verifies compact JWS bearer tokens for a fixed set of trusted issuers."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        *,
        keys: KeyLookup,
        clock: Clock,
        limits: TokenLimits = TokenLimits(),  # noqa: B008 - frozen, so sharing is safe
        cache_size: int = 10_000,
        stats: VerifierStats | None = None,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self.stats = stats or VerifierStats()
        self._limits = limits
        self._cache = VerifiedTokenCache(cache_size)
        self._issuers: dict[str, _Issuer] = {}
        for settings in issuers:
            if settings.issuer in self._issuers:
                raise ValueError(f"issuer {settings.issuer!r} is configured twice")
            self._issuers[settings.issuer] = _Issuer(
                rules=ClaimRules.from_settings(settings),
                algorithms=allow_list(settings.algorithms),
                check_wait=settings.jwks.check_wait_seconds,
            )

    def clear_cache(self) -> None:
        """Forget every verified token (when the keys it was verified with are released)."""
        self._cache.clear()

    def verify_now(self, token: str) -> Principal | NeedKeys:
        """Verify with the keys known now: the Principal, or what must be fetched first.
        Raises InvalidToken (and nothing else) if refused. No I/O, no waiting."""
        return self._verify(token, may_need_keys=True)

    def verify_fetched(self, token: str) -> Principal:
        """Verify after `fetch_keys`, with the keys there are now (none, or still not the
        token's kid: the token is refused). Raises InvalidToken if refused."""
        found = self._verify(token, may_need_keys=False)
        if isinstance(found, NeedKeys):  # not reached: _verify asks only when allowed to
            raise InvalidToken("keys_unavailable")
        return found

    def _verify(self, token: str, *, may_need_keys: bool) -> Principal | NeedKeys:
        try:
            cached = self._from_cache(token)
            if cached is not None:
                return cached
            parsed = parse_compact(token, self._limits)
            issuer = self._issuer_for(parsed)
            ring = self._keys(issuer.rules.issuer)
            if ring is None or (parsed.kid is not None and not ring.has_kid(parsed.kid)):
                if may_need_keys:
                    return NeedKeys(issuer.rules.issuer, parsed.kid, issuer.check_wait)
                if ring is None:
                    raise InvalidToken("keys_unavailable")
            key = _check_signature(parsed, ring)
            return self._admit(token, parsed, issuer, key)
        except InvalidToken:
            raise
        except Exception as exc:
            log_unexpected(log, "token verification failed unexpectedly", exc)
            raise InvalidToken("internal_error") from None

    def _from_cache(self, token: str) -> Principal | None:
        if not isinstance(token, str):
            raise InvalidToken("malformed")
        if len(token) > self._limits.max_token_bytes:
            raise InvalidToken("oversized")  # before hashing it for the cache lookup
        cached = self._cache.get(token)
        if cached is None:
            self.stats.cache_misses += 1
            return None
        now = self._clock.now()
        if cached.not_before <= now < cached.not_after:
            ring = self._keys(cached.issuer)
            if ring is not None and cached.key_identity in ring.identities:
                self.stats.cache_hits += 1
                return cached.principal
        self.stats.cache_misses += 1
        # Expired, not yet valid again (clock stepped back) or key gone: decide afresh.
        self._cache.discard(token)
        return None

    def _issuer_for(self, parsed: ParsedJws) -> _Issuer:
        # Chosen by the unverified iss; that issuer's keys must then verify the token, and
        # claims.check_identity compares iss again once the signature is known good.
        iss = parsed.claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken("unknown_issuer")
        if parsed.alg not in issuer.algorithms:
            raise InvalidToken("alg_not_allowed")  # RFC 8725 §3.1; none/HS* are never listed
        check_typ(parsed.header, issuer.rules)
        return issuer

    def _admit(
        self, token: str, parsed: ParsedJws, issuer: _Issuer, key: VerificationKey
    ) -> Principal:
        principal, validity = build_principal(
            parsed.claims, issuer.rules, key_id=key.kid, algorithm=parsed.alg, now=self._clock.now()
        )
        entry = CachedToken(
            principal, issuer.rules.issuer, key.identity, validity.not_before, validity.not_after
        )
        self._cache.put(token, entry)
        return principal


def _check_signature(parsed: ParsedJws, ring: KeyRing) -> VerificationKey:
    """The key (chosen by kid, else by key type) whose signature check passes."""
    kid = parsed.kid
    if kid is not None and not ring.has_kid(kid):
        raise InvalidToken("unknown_key")
    candidates = ring.candidates(parsed.alg, kid)
    if not candidates:
        raise InvalidToken("alg_key_mismatch" if kid is not None else "unknown_key")
    model = ALGORITHMS[parsed.alg].model
    for key in candidates:
        if _signature_ok(model, parsed, key):
            return key
    raise InvalidToken("bad_signature")


def _signature_ok(model: JWSAlgModel, parsed: ParsedJws, key: VerificationKey) -> bool:
    try:
        return bool(model.verify(parsed.signing_input, parsed.signature, key.jwk))
    except Exception:  # e.g. a signature of the wrong length for the curve: not valid
        return False
