"""When an unknown `kid` may make a key source refetch its JWKS. Pure: a clock in, yes/no out.

A token whose `kid` is not in the key set is either signed with a key the IdP just rotated
in, or forged. Refetching for every one lets a flood of random kids hammer the IdP; one
long cooldown (the old design: 30 s) lets a single forged token per cooldown keep a freshly
rotated key out, since every legitimate token inside the cooldown is refused. So the gate
combines three limits (defaults from `JwksSettings`):

    min_interval   2 s      between two unknown-kid refetches (concurrent callers also
                            share the one fetch in flight, see RemoteKeySource.refresh)
    per_minute     12       a token bucket of refetches, refilled at 12 per minute ...
    burst          4        ... holding at most 4, so a quiet source answers a rotation at
                            once and a sustained flood gets one refetch per 5 s
    absent_for     30 s     a kid that a successful refetch showed absent does not trigger
                            another refetch for this long (a repeated bogus kid costs
                            nothing), while a NEW kid still may after `min_interval`

Under a sustained flood of random kids a source makes at most `burst + per_minute` refetches
in its first minute (16) and `per_minute` (12) in every later one; and since each refetch
installs the IdP's whole current key set, a key the IdP publishes is used at most
`max(min_interval, 60 / per_minute)` seconds (5 s) plus one fetch later, flood or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz_service.tokens.settings import JwksSettings
from sidecar_runtime.clock import Clock

MAX_REMEMBERED_KIDS = 1024  # a flood of random kids must not grow memory without bound


@dataclass(frozen=True, slots=True)
class RefetchPolicy:
    """The three limits; see the module docstring."""

    min_interval: float = 2.0
    per_minute: float = 12.0
    burst: int = 4
    absent_for: float = 30.0
    max_remembered: int = MAX_REMEMBERED_KIDS

    @classmethod
    def from_settings(cls, settings: JwksSettings) -> RefetchPolicy:
        """The policy an issuer's `jwks` settings describe."""
        return cls(
            min_interval=settings.unknown_kid_cooldown_seconds,
            per_minute=settings.unknown_kid_refetches_per_minute,
            burst=settings.unknown_kid_refetch_burst,
            absent_for=settings.unknown_kid_absent_seconds,
        )

    def __post_init__(self) -> None:
        if self.min_interval < 0 or self.absent_for < 0:
            raise ValueError("min_interval and absent_for must be >= 0")
        if self.per_minute <= 0 or self.burst < 1 or self.max_remembered < 0:
            raise ValueError("per_minute must be > 0, burst >= 1, max_remembered >= 0")


class UnknownKidGate:
    """Says whether an unknown kid may trigger a refetch now, and remembers absent kids."""

    def __init__(self, clock: Clock, policy: RefetchPolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or RefetchPolicy()
        self._tokens = float(self.policy.burst)
        self._refilled_at = clock.monotonic()
        self._last_grant: float | None = None
        # kid -> monotonic time until which it counts as absent; insertion order is expiry
        # order (every entry lives `absent_for`, re-insertion moves a kid to the end).
        self._absent: dict[str, float] = {}

    def allow(self, kid: str | None) -> bool:
        """True (and one refetch spent) if a refetch for this kid may start now."""
        now = self._clock.monotonic()
        if kid is not None and self.known_absent(kid, now):
            return False
        last = self._last_grant
        if last is not None and now - last < self.policy.min_interval:
            return False
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        self._last_grant = now
        return True

    def remember_absent(self, kid: str) -> None:
        """A successful refetch did not contain `kid`: do not refetch for it for a while."""
        now = self._clock.monotonic()
        self._expire(now)
        self._absent.pop(kid, None)
        self._absent[kid] = now + self.policy.absent_for
        while len(self._absent) > self.policy.max_remembered:
            del self._absent[next(iter(self._absent))]

    def known_absent(self, kid: str, now: float | None = None) -> bool:
        """Did a refetch show this kid absent less than `absent_for` ago?"""
        until = self._absent.get(kid)
        at = self._clock.monotonic() if now is None else now
        return until is not None and at < until

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._refilled_at, 0.0)
        self._refilled_at = now
        rate = self.policy.per_minute / 60.0
        self._tokens = min(float(self.policy.burst), self._tokens + elapsed * rate)

    def _expire(self, now: float) -> None:
        while self._absent:
            kid, until = next(iter(self._absent.items()))
            if until > now:
                return
            del self._absent[kid]
