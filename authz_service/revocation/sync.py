"""Keeps a replica's in-memory revocation list current, and answers the per-request check.

    list = RevocationList(store, settings, clock=SystemClock())
    await list.start()              # one full load now (failure: not ready, retried)
    list.refusal(principal)         # None | "revoked" | "revocation_unavailable"; no I/O
    list.ready(), list.status()     # for health and telemetry adapters
    await list.stop()

Freshness: each write is announced on the pub/sub channel and applied at once; every
`sync_interval_seconds` a GET of the version counter reloads the whole list when it moved
(a missed event, a replica that was away), and every `full_resync_seconds` it reloads
regardless. The snapshot is replaced whole, never changed in place, so a check on a worker
thread reads one consistent list.

Lost state, `on_unavailable`:
  keep_last    (default) serve with the last list read; `status().stale` and the
               `sync_failures` counter say so. Never read since start: not ready, and every
               token is refused as `revocation_unavailable` (never fail open).
  fail_closed  as keep_last, and once the last good read is older than
               `fail_closed_after_seconds` every token is refused and ready() is False.
A Redis that comes back with a lower version lost its data: the replica keeps the entries
it knew (until they expire) on top of what it reads, and counts a reset.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from authz_service.principal import Principal
from authz_service.revocation.settings import RevocationSettings
from authz_service.revocation.snapshot import (
    EMPTY,
    Entry,
    RevocationSnapshot,
    is_principal_revoked,
    is_revoked,
    merge,
)
from authz_service.revocation.store import RevocationStore, RevocationStoreError
from sidecar_runtime.clock import Clock
from sidecar_runtime.loops import Periodic

log = logging.getLogger(__name__)

REVOKED = "revoked"
UNAVAILABLE = "revocation_unavailable"


@dataclass(frozen=True, slots=True)
class RevocationStatus:
    """What a health or telemetry adapter reads (plain values)."""

    ready: bool
    stale: bool  # the last read failed: serving with an older list
    entries: int
    version: int
    sync_failures: int  # reads that failed since start
    resets: int  # times the store came back with less than it had
    skipped_entries: int  # stored entries that could not be parsed (last full read)
    seconds_since_sync: float | None  # None: never read


class RevocationList:
    """One replica's view of the revocation list (see the module docstring)."""

    def __init__(
        self, store: RevocationStore, settings: RevocationSettings, *, clock: Clock
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._snapshot = EMPTY
        self._last_ok: float | None = None  # monotonic time of the last good read
        self._last_full: float | None = None
        self._failing = False
        self._failures = 0
        self._resets = 0
        self._skipped = 0
        self._poller = Periodic(
            self.sync, interval=lambda: self._settings.sync_interval_seconds, what="revocation sync"
        )
        # Follows the channel until the connection fails, then subscribes again.
        self._listener = Periodic(
            self._listen,
            interval=lambda: self._settings.sync_interval_seconds,
            what="revocation events",
        )

    @property
    def snapshot(self) -> RevocationSnapshot:
        return self._snapshot

    # -- the hot path: no I/O ---------------------------------------------------------

    def refusal(self, principal: Principal) -> str | None:
        """Why this verified token must be refused now, or None. Run it on every request,
        cache hits included (the verified-token cache knows nothing of revocations)."""
        if self._unavailable():
            return UNAVAILABLE
        return REVOKED if is_principal_revoked(self._snapshot, principal) else None

    def refusal_for(
        self, *, issuer: str, jti: str | None, sub: str, iat: float | None
    ) -> str | None:
        """`refusal` from plain claim values."""
        if self._unavailable():
            return UNAVAILABLE
        revoked = is_revoked(self._snapshot, issuer=issuer, jti=jti, sub=sub, iat=iat)
        return REVOKED if revoked else None

    def _unavailable(self) -> bool:
        if self._last_ok is None:
            return True
        if self._settings.on_unavailable != "fail_closed":
            return False
        return self._clock.monotonic() - self._last_ok > self._settings.fail_closed_after_seconds

    def ready(self) -> bool:
        """SERVING for health: the list was read, and (fail_closed) is fresh enough."""
        return not self._unavailable()

    def status(self) -> RevocationStatus:
        since = None if self._last_ok is None else self._clock.monotonic() - self._last_ok
        return RevocationStatus(
            ready=self.ready(),
            stale=self._failing or self._last_ok is None,
            entries=len(self._snapshot),
            version=self._snapshot.version,
            sync_failures=self._failures,
            resets=self._resets,
            skipped_entries=self._skipped,
            seconds_since_sync=since,
        )

    # -- keeping it current -------------------------------------------------------------

    async def start(self) -> None:
        """Read the whole list once (a failure is logged; the poller keeps trying), then
        follow the channel and poll the version."""
        await self.sync()
        self._poller.start()
        self._listener.start()

    async def stop(self) -> None:
        await self._poller.stop()
        await self._listener.stop()

    async def sync(self) -> None:
        """One pass: reload when never loaded, when the version moved, or when the last
        full reload is older than `full_resync_seconds`; else just note the good read."""
        try:
            if self._needs_full_reload() or await self._store.version() != self._snapshot.version:
                await self._reload()
            self._succeeded()
        except RevocationStoreError as exc:
            self._failed(exc)

    def apply_event(self, version: int, entry: Entry) -> None:
        """A write announced on the channel. The version advances only when no write was
        missed in between; otherwise the next poll sees the gap and reloads."""
        current = self._snapshot
        next_version = version if version == current.version + 1 else current.version
        self._snapshot = merge(current, [entry], version=next_version, now=self._clock.now())

    def _needs_full_reload(self) -> bool:
        if self._last_ok is None or self._last_full is None:
            return True
        return self._clock.monotonic() - self._last_full >= self._settings.full_resync_seconds

    async def _reload(self) -> None:
        now = self._clock.now()
        loaded = await self._store.load(now=now)
        current = self._snapshot
        base = EMPTY
        if self._last_ok is not None and loaded.version < current.version:
            self._resets += 1
            log.warning(
                "revocation store lost state (version %d, was %d): keeping the %d known "
                "entries until they expire",
                loaded.version,
                current.version,
                len(current),
            )
            base = current
        self._snapshot = merge(base, loaded.entries, version=loaded.version, now=now)
        self._skipped = loaded.skipped
        self._last_full = self._clock.monotonic()

    def _succeeded(self) -> None:
        if self._failing:
            log.info("revocation store reachable again (%d entries)", len(self._snapshot))
        self._failing = False
        self._last_ok = self._clock.monotonic()

    def _failed(self, exc: RevocationStoreError) -> None:
        self._failures += 1
        if not self._failing:
            what = "serving with the last list" if self._last_ok is not None else "no list yet"
            log.warning("revocation store unavailable (%s): %s", what, exc)
        self._failing = True

    async def _listen(self) -> None:
        with contextlib.suppress(RevocationStoreError):
            await self._store.listen(self.apply_event)
