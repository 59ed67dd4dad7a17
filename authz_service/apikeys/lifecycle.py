"""KeyLifecycle: create, list, show, rotate and revoke API keys (the `apikey` CLI's core).

- create: a new key id and secret; Redis gets the keyed hash, never the secret, and the
  caller gets the key text once (`NewKey.key`).
- rotate: a successor with the same subject, scopes, roles, tenant and plan; the old key
  stays valid until now + overlap, then is refused as `expired`.
- revoke: refused from now on; every replica evicts it within one second (the event).

Each refuses what would escalate privileges: scopes, roles or a lifetime beyond the
configured ceiling, on create and on rotate (the ceiling may have shrunk since). Every
change publishes the key id, so replicas drop what they cached (also negative entries of
a just-created key). Time comes from the injected clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from authz_service.apikeys.errors import LifecycleError
from authz_service.apikeys.format import format_key, new_key_id, new_secret
from authz_service.apikeys.hashing import PepperRing
from authz_service.apikeys.records import KeyRecord, check_label, check_token
from authz_service.apikeys.settings import CeilingSettings
from authz_service.apikeys.store import KeyStore
from sidecar_runtime.clock import Clock

DAY = 86_400
MAX_OVERLAP_SECONDS = 30 * DAY
_KEY_ID = re.compile(r"^[a-z2-7]{16}$")
_ATTEMPTS = 5  # key id collisions are 80-bit unlikely; retry a few times all the same


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly minted key: its text (shown once) and its record."""

    key: str = field(repr=False)
    record: KeyRecord


class KeyLifecycle:
    def __init__(
        self,
        *,
        store: KeyStore,
        peppers: PepperRing,
        key_prefix: str,
        ceiling: CeilingSettings,
        default_ttl_days: int,
        clock: Clock,
    ) -> None:
        self._store = store
        self._peppers = peppers
        self._prefix = key_prefix
        self._ceiling = ceiling
        self._default_ttl_days = default_ttl_days
        self._clock = clock

    async def create(
        self,
        *,
        subject: str,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        tenant: str = "",
        plan: str = "",
        ttl_days: int | None = None,
    ) -> NewKey:
        """Mint a key; LifecycleError if a value is unusable or over the ceiling."""
        try:
            template = KeyRecord(
                key_id="",
                prefix=self._prefix,
                pepper_id="",
                digest="",
                subject=check_token("subject", subject),
                scopes=frozenset(check_token("scope", s) for s in scopes),
                roles=frozenset(check_token("role", r) for r in roles),
                tenant=check_label("tenant", tenant),
                plan=check_label("plan", plan),
                created=0.0,
                expires=0.0,
            )
        except ValueError as exc:
            raise LifecycleError(str(exc)) from None
        return await self._mint(template, ttl_days=ttl_days)

    async def list(self) -> list[KeyRecord]:
        """Every stored key, oldest first."""
        records = [await self._store.get(key_id) for key_id in await self._store.ids()]
        return sorted((r for r in records if r is not None), key=lambda r: r.created)

    async def show(self, key_id: str) -> KeyRecord:
        if not _KEY_ID.match(key_id):
            raise LifecycleError(f"{key_id!r} is not a key id (16 characters a-z, 2-7)")
        record = await self._store.get(key_id)
        if record is None:
            raise LifecycleError(f"no API key {key_id}")
        return record

    async def rotate(
        self, key_id: str, *, overlap_seconds: float, ttl_days: int | None = None
    ) -> NewKey:
        """A successor key; the old one is accepted for `overlap_seconds` more."""
        if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
            raise LifecycleError(f"overlap must be 0 to {MAX_OVERLAP_SECONDS} seconds")
        old = await self._usable(key_id, "rotate")
        new = await self._mint(replace(old, rotated_from=old.key_id), ttl_days=ttl_days)
        now = self._now()
        retired = replace(
            old, replaced_by=new.record.key_id, valid_until=min(now + overlap_seconds, old.expires)
        )
        await self._write(retired)
        return new

    async def revoke(self, key_id: str) -> KeyRecord:
        """Refuse the key from now on, on every replica."""
        record = await self.show(key_id)
        if record.revoked is not None:
            raise LifecycleError(f"API key {key_id} is already revoked")
        revoked = replace(record, revoked=self._now())
        await self._write(revoked)
        return revoked

    async def _usable(self, key_id: str, action: str) -> KeyRecord:
        record = await self.show(key_id)
        if record.revoked is not None:
            raise LifecycleError(f"cannot {action} API key {key_id}: it is revoked")
        if record.replaced_by is not None:
            raise LifecycleError(
                f"cannot {action} API key {key_id}: already replaced by {record.replaced_by}"
            )
        if self._now() >= record.ends_at():
            raise LifecycleError(f"cannot {action} API key {key_id}: it has expired")
        return record

    async def _mint(self, template: KeyRecord, *, ttl_days: int | None) -> NewKey:
        days = self._default_ttl_days if ttl_days is None else ttl_days
        self._check_ceiling(template, days)
        now = self._now()
        for _ in range(_ATTEMPTS):
            key_id, secret = new_key_id(), new_secret()
            pepper_id, digest = self._peppers.hash_new(key_id, secret)
            record = replace(
                template,
                key_id=key_id,
                prefix=self._prefix,
                pepper_id=pepper_id,
                digest=digest,
                created=now,
                expires=now + days * DAY,
                last_used=None,
                revoked=None,
                valid_until=None,
                replaced_by=None,
            )
            if await self._store.create(record):
                await self._store.publish(key_id)  # drops negative cache entries
                return NewKey(format_key(self._prefix, key_id, secret), record)
        raise LifecycleError("could not find a free key id; try again")

    def _check_ceiling(self, record: KeyRecord, ttl_days: int) -> None:
        ceiling = self._ceiling
        extra_scopes = sorted(record.scopes - ceiling.max_scopes)
        extra_roles = sorted(record.roles - ceiling.max_roles)
        if extra_scopes:
            raise LifecycleError(f"scopes over the ceiling (ceiling.max_scopes): {extra_scopes}")
        if extra_roles:
            raise LifecycleError(f"roles over the ceiling (ceiling.max_roles): {extra_roles}")
        if not 1 <= ttl_days <= ceiling.max_ttl_days:
            raise LifecycleError(f"ttl must be 1 to {ceiling.max_ttl_days} days (ceiling)")

    def _now(self) -> float:
        # Redis keeps times to the millisecond; so do the records handed back.
        return round(self._clock.now(), 3)

    async def _write(self, record: KeyRecord) -> None:
        if not await self._store.update(record):
            raise LifecycleError(f"API key {record.key_id} disappeared meanwhile")
        await self._store.publish(record.key_id)
