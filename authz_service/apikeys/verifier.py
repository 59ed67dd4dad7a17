"""ApiKeyVerifier: a presented API key in, a Principal or InvalidApiKey out.

The order: the key's shape (format.parse_key, no lookup for a malformed key) -> the
record by key id, from the cache -> the secret's keyed hash, compared in constant time
-> revoked -> expired (or past its rotation overlap) -> Principal.

Synchronous and without I/O, like authz_service.tokens.verifier: when the cache has no
usable entry for the key id, `verify_now` answers `NeedKey(key_id, generation)`; the
caller reads the record from Redis (authz_service.apikeys.fetching), hands it to the
cache with that generation, and calls `verify_fetched` with what it read.

Unknown key ids and bad secrets are guesses: they are counted per client address in
`ApiKeyStats`, which a telemetry adapter reads.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from authz_service.apikeys.cache import KeyCache, Missing
from authz_service.apikeys.errors import InvalidApiKey, Reason
from authz_service.apikeys.format import MalformedKey, ParsedKey, parse_key
from authz_service.apikeys.hashing import PepperRing
from authz_service.apikeys.records import KeyRecord
from authz_service.principal import Principal
from sidecar_runtime.clock import Clock

_GUESSES: frozenset[str] = frozenset({"unknown_key", "bad_secret"})


# Principal.algorithm of a principal an API key stands for (JWTs carry their `alg`).
API_KEY_ALGORITHM = "api_key"


@dataclass(frozen=True, slots=True)
class NeedKey:
    """The cache has nothing for this key id: read its record, `put` it into the cache
    with `generation`, then `verify_fetched`."""

    key_id: str
    generation: int


@dataclass(slots=True)
class ApiKeyStats:
    """Plain counters a metrics layer can read. `guesses_by_address` counts unknown key ids
    and bad secrets per client address, for the `max_addresses` most recent addresses
    (older ones are dropped and counted in `addresses_dropped`)."""

    max_addresses: int = 10_000
    accepted: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    guesses_by_address: OrderedDict[str, int] = field(default_factory=OrderedDict)
    addresses_dropped: int = 0

    def record_refusal(self, reason: str, client_address: str) -> None:
        self.refused[reason] += 1
        if reason in _GUESSES:
            table = self.guesses_by_address
            table[client_address] = table.get(client_address, 0) + 1
            table.move_to_end(client_address)
            if len(table) > self.max_addresses:
                table.popitem(last=False)
                self.addresses_dropped += 1

    def top_guessers(self, count: int = 10) -> list[tuple[str, int]]:
        """The addresses with the most guesses, most first."""
        ranked = sorted(self.guesses_by_address.items(), key=lambda item: -item[1])
        return ranked[:count]


class ApiKeyVerifier:
    """Verifies `<prefix>_<key id>_<secret><checksum>` keys against cached records."""

    def __init__(
        self,
        *,
        prefix: str,
        issuer: str,
        peppers: PepperRing,
        cache: KeyCache,
        clock: Clock,
        stats: ApiKeyStats | None = None,
    ) -> None:
        self._prefix = prefix
        self._issuer = issuer
        self._peppers = peppers
        self._clock = clock
        self.cache = cache
        self.stats = stats or ApiKeyStats()

    def verify_now(self, presented: str, *, client_address: str = "") -> Principal | NeedKey:
        """Decide with the cache; NeedKey if it has no usable entry for the key id."""
        parsed = self._parse(presented, client_address)
        cached = self.cache.get(parsed.key_id)
        if isinstance(cached, Missing):
            self.stats.cache_misses += 1
            return NeedKey(parsed.key_id, self.cache.generation())
        self.stats.cache_hits += 1
        return self._decide(parsed, cached, client_address)

    def verify_fetched(
        self, presented: str, record: KeyRecord | None, *, client_address: str = ""
    ) -> Principal:
        """Decide with the record just read for the key id (None: there is none)."""
        parsed = self._parse(presented, client_address)
        if record is not None and record.key_id != parsed.key_id:
            record = None  # the caller mixed up two keys: never verify against another's
        return self._decide(parsed, record, client_address)

    def refuse(self, reason: Reason, client_address: str = "") -> InvalidApiKey:
        """Count a refusal decided outside the core (`store_unavailable`) and return it."""
        self.stats.record_refusal(reason, client_address)
        return InvalidApiKey(reason)

    def _parse(self, presented: str, client_address: str) -> ParsedKey:
        try:
            return parse_key(presented, prefix=self._prefix)
        except MalformedKey as exc:
            reason: Reason = "wrong_prefix" if exc.reason == "wrong_prefix" else "malformed"
            raise self.refuse(reason, client_address) from None

    def _decide(
        self, parsed: ParsedKey, record: KeyRecord | None, client_address: str
    ) -> Principal:
        reason = self._refusal(parsed, record)
        if reason is not None or record is None:
            raise self.refuse(reason or "unknown_key", client_address)
        self.stats.accepted += 1
        return principal_for(record, issuer=self._issuer)

    def _refusal(self, parsed: ParsedKey, record: KeyRecord | None) -> Reason | None:
        # The secret first: a guess at a revoked or expired id is a guess, not `revoked`.
        if record is None or record.prefix != parsed.prefix:
            return "unknown_key"
        if not self._peppers.matches(
            key_id=parsed.key_id,
            secret=parsed.secret,
            pepper_id=record.pepper_id,
            stored=record.digest,
        ):
            return "bad_secret"
        if record.revoked is not None:
            return "revoked"
        if self._clock.now() >= record.ends_at():
            return "expired"
        return None


def principal_for(record: KeyRecord, *, issuer: str) -> Principal:
    """The Principal a valid key stands for. Its claims look like a JWT's (`sub`, `iss`,
    `scope`, `roles`, `exp`, `iat`) plus `key_id`, `tenant` and `plan`, so CEL's `token.*`,
    the identity headers and the rate-limit metadata read them unchanged."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": record.subject,
        "key_id": record.key_id,
        "scope": " ".join(sorted(record.scopes)),
        "roles": sorted(record.roles),
        "iat": record.created,
        "exp": record.ends_at(),
    }
    if record.tenant:
        claims["tenant"] = record.tenant
    if record.plan:
        claims["plan"] = record.plan
    return Principal(
        subject=record.subject,
        issuer=issuer,
        audiences=(),
        scopes=record.scopes,
        roles=record.roles,
        claims=MappingProxyType(claims),
        expires_at=record.ends_at(),
        key_id=record.key_id,
        algorithm=API_KEY_ALGORITHM,
    )
