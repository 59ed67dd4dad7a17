"""Where an issuer's keys come from: the `KeySource` port, a static and a file adapter.

The remote (URL / OIDC discovery) adapter lives in `remote.py`. Every source keeps the last
good KeyRing and only ever replaces it with another non-empty one, so a broken JWKS never
leaves an issuer without keys (ARCHITECTURE §5a "serve the last good key set").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from authz_service.tokens.encoding import loads_strict
from authz_service.tokens.jwk import KeyRing, load_key_ring
from authz_service.tokens.refetch import RefetchPolicy, UnknownKidGate
from authz_service.tokens.settings import JwksSettings
from sidecar_runtime.clock import Clock
from sidecar_runtime.errors import ConfigError

log = logging.getLogger(__name__)


class KeySource(Protocol):
    """An issuer's verification keys.

    `start` and `close` are paired per user: a source shared by an old and a new verifier
    across a config reload keeps running until the last user closes it.
    """

    async def start(self) -> None:
        """Load the keys for the first time and start any background refresh."""
        ...

    async def close(self) -> None:
        """Release this user's hold; the last one stops background work."""
        ...

    def current(self) -> KeyRing | None:
        """The key set to verify with now; None if none was ever loaded."""
        ...

    async def refresh_for_unknown_kid(self, kid: str | None = None) -> KeyRing | None:
        """Reload if the unknown-kid gate allows (merging concurrent callers); return current().

        `kid` is the token's unknown kid (None when the set was never loaded)."""
        ...

    def last_error(self) -> str | None:
        """Why the last load failed, or None (for health reports and logs; never secret)."""
        ...


class StaticKeySource:
    """A fixed key set: the in-memory double, and what tests inject."""

    def __init__(self, ring: KeyRing | None = None, *, error: str | None = None) -> None:
        self.ring = ring
        self.error = error
        self.unknown_kid_refreshes = 0

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to stop."""

    def current(self) -> KeyRing | None:
        """The fixed ring."""
        return self.ring

    async def refresh_for_unknown_kid(self, kid: str | None = None) -> KeyRing | None:
        """Count the request (tests assert on it) and return the fixed ring."""
        self.unknown_kid_refreshes += 1
        return self.ring

    def last_error(self) -> str | None:
        """The error given at construction, if any."""
        return self.error


@dataclass(frozen=True, slots=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


class FileKeySource:
    """A JWKS file, re-read when its mtime, size or inode changes.

    The file is looked at (one stat) at most every `file_check_seconds`, from the verify
    path itself, so there is no background task. Reads are small (capped by `max_bytes`)
    and happen only when the file changed, so they are done inline.
    """

    def __init__(self, path: Path, *, issuer: str, settings: JwksSettings, clock: Clock) -> None:
        self.path = path
        self._issuer = issuer
        self._settings = settings
        self._clock = clock
        self._ring: KeyRing | None = None
        self._stamp: _FileStamp | None = None
        self._next_check = clock.monotonic() + settings.file_check_seconds
        self._gate = UnknownKidGate(clock, RefetchPolicy.from_settings(settings))
        self._last_error: str | None = None

    async def start(self) -> None:
        """Load the file; a missing or unusable file at start is a configuration error."""
        if self._ring is not None:
            return
        error = self._reload()
        if error is not None:
            raise ConfigError(self.path, "jwks_file", error)

    async def close(self) -> None:
        """No background work to stop."""

    def current(self) -> KeyRing | None:
        """The key set, after a cheap change check if one is due."""
        now = self._clock.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._settings.file_check_seconds
            self._reload()
        return self._ring

    async def refresh_for_unknown_kid(self, kid: str | None = None) -> KeyRing | None:
        """Look at the file now, if the unknown-kid gate allows it."""
        if self._gate.allow(kid):
            self._reload()
            ring = self._ring
            if kid is not None and ring is not None and not ring.has_kid(kid):
                self._gate.remember_absent(kid)
        return self._ring

    def last_error(self) -> str | None:
        """Why the file could not be used the last time it was read, or None."""
        return self._last_error

    def _reload(self) -> str | None:
        """Re-read the file if it changed; return an error text if it could not be used."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return self._keep_last_good(f"cannot stat: {exc.strerror or exc}")
        stamp = _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp and self._ring is not None:
            return None
        self._stamp = stamp  # a bad version is parsed once, not at every check
        try:
            ring = self._read()
        except (OSError, ValueError) as exc:
            return self._keep_last_good(str(exc))
        self._ring = ring
        self._last_error = None
        log.info("JWKS file loaded", extra={"fields": {"issuer": self._issuer, "keys": len(ring)}})
        return None

    def _read(self) -> KeyRing:
        with open(self.path, "rb") as handle:
            data = handle.read(self._settings.max_bytes + 1)
        if len(data) > self._settings.max_bytes:
            raise ValueError(f"file is over {self._settings.max_bytes} bytes")
        ring = load_key_ring(loads_strict(data), origin=self._issuer)
        if not ring:
            raise ValueError("the JWKS holds no usable key")
        return ring

    def _keep_last_good(self, error: str) -> str:
        self._last_error = error
        message = (
            "JWKS file unusable; keeping the last good key set"
            if self._ring is not None
            else "JWKS file unusable and no key set was ever loaded from it"
        )
        log.warning(
            message,
            extra={"fields": {"issuer": self._issuer, "path": str(self.path), "error": error}},
        )
        return error
