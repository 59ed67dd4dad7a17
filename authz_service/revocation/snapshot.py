"""The revocation list as a pure value, and the check every request runs against it.

A `RevocationSnapshot` is immutable and swapped whole by its adapter (`sync`); the check
is two dict lookups, with no I/O and no clock:

    revoked jti      (issuer, jti) is listed                        -> refused
    revoked subject  (issuer, sub) is listed with revoked_before T,
                     and the token's iat < T (or it has no iat)     -> refused

A token without `iat` cannot show it was issued after the subject's revocation, so it is
refused while the subject entry lasts. Entries only ever grow stricter: merging two
entries for one subject keeps the later `revoked_before` and the later expiry, so an
event replayed or delivered out of order can never un-revoke anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from authz_service.principal import Principal

# Identifiers are at most this long (the token size caps keep real ones far shorter).
MAX_IDENTIFIER_CHARS = 1024


class BadEntryError(ValueError):
    """A stored entry that is not one this package wrote; it is skipped, never trusted."""


@dataclass(frozen=True, slots=True)
class RevokedJti:
    """One token, named by its issuer and `jti`, refused until `expires_at`."""

    issuer: str
    jti: str
    revoked_at: float
    expires_at: float

    @property
    def identity(self) -> tuple[str, str]:
        return (self.issuer, self.jti)

    def merged(self, other: RevokedJti) -> RevokedJti:
        """The longer-lived of two entries for one token."""
        return self if self.expires_at >= other.expires_at else other


@dataclass(frozen=True, slots=True)
class RevokedSubject:
    """Every token of `subject` from `issuer` issued before `revoked_before`."""

    issuer: str
    subject: str
    revoked_before: float
    revoked_at: float
    expires_at: float

    @property
    def identity(self) -> tuple[str, str]:
        return (self.issuer, self.subject)

    def merged(self, other: RevokedSubject) -> RevokedSubject:
        """The stricter of two entries for one subject (revocations never loosen)."""
        return replace(
            self,
            revoked_before=max(self.revoked_before, other.revoked_before),
            revoked_at=max(self.revoked_at, other.revoked_at),
            expires_at=max(self.expires_at, other.expires_at),
        )


Entry = RevokedJti | RevokedSubject


@dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """The whole list at one version of the store. Build with `merge`, never mutate."""

    jtis: Mapping[tuple[str, str], RevokedJti]
    subjects: Mapping[tuple[str, str], RevokedSubject]
    version: int = 0

    def __len__(self) -> int:
        return len(self.jtis) + len(self.subjects)

    def entries(self) -> list[Entry]:
        return [*self.jtis.values(), *self.subjects.values()]


EMPTY = RevocationSnapshot(MappingProxyType({}), MappingProxyType({}), 0)


def is_revoked(
    snapshot: RevocationSnapshot, *, issuer: str, jti: str | None, sub: str, iat: float | None
) -> bool:
    """Whether a verified token with these claims is revoked in `snapshot`."""
    if jti is not None and (issuer, jti) in snapshot.jtis:
        return True
    subject = snapshot.subjects.get((issuer, sub))
    if subject is None:
        return False
    return iat is None or iat < subject.revoked_before


def is_principal_revoked(snapshot: RevocationSnapshot, principal: Principal) -> bool:
    """`is_revoked` for a verified token's Principal (reads `jti` and `iat` from its claims;
    a `jti` that is not a string or an `iat` that is not a number counts as absent)."""
    jti = principal.claims.get("jti")
    iat = principal.claims.get("iat")
    return is_revoked(
        snapshot,
        issuer=principal.issuer,
        jti=jti if isinstance(jti, str) else None,
        sub=principal.subject,
        iat=float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None,
    )


def merged_entry(known: Entry | None, entry: Entry) -> Entry:
    """`entry`, made at least as strict as `known` (the stored entry for the same key)."""
    if isinstance(known, RevokedJti) and isinstance(entry, RevokedJti):
        return known.merged(entry)
    if isinstance(known, RevokedSubject) and isinstance(entry, RevokedSubject):
        return known.merged(entry)
    return entry


def jti_entry(*, issuer: str, jti: str, now: float, ttl_seconds: float) -> RevokedJti:
    """A revocation of one token: it must outlive the token, so `ttl_seconds` is at least
    the longest token life (the token was issued at or before `now`)."""
    return RevokedJti(issuer, jti, revoked_at=now, expires_at=now + ttl_seconds)


def subject_entry(
    *, issuer: str, subject: str, before: float, now: float, max_token_lifetime: float
) -> RevokedSubject:
    """A revocation of every token of `subject` issued before `before`: the last of them
    expires by `before + max_token_lifetime`, and so does the entry."""
    return RevokedSubject(
        issuer,
        subject,
        revoked_before=before,
        revoked_at=now,
        expires_at=before + max_token_lifetime,
    )


def merge(
    snapshot: RevocationSnapshot, entries: Iterable[Entry], *, version: int, now: float
) -> RevocationSnapshot:
    """A new snapshot with `entries` added and every entry expired by `now` dropped."""
    jtis = {key: e for key, e in snapshot.jtis.items() if e.expires_at > now}
    subjects = {key: e for key, e in snapshot.subjects.items() if e.expires_at > now}
    for entry in entries:
        if entry.expires_at <= now:
            continue
        if isinstance(entry, RevokedJti):
            known_jti = jtis.get(entry.identity)
            jtis[entry.identity] = entry if known_jti is None else known_jti.merged(entry)
        else:
            known = subjects.get(entry.identity)
            subjects[entry.identity] = entry if known is None else known.merged(entry)
    return RevocationSnapshot(MappingProxyType(jtis), MappingProxyType(subjects), version)


def encode_entry(entry: Entry) -> str:
    """The JSON stored in Redis and sent on the channel (identifiers, times: no token)."""
    if isinstance(entry, RevokedJti):
        body: dict[str, Any] = {"kind": "jti", "issuer": entry.issuer, "jti": entry.jti}
    else:
        body = {
            "kind": "sub",
            "issuer": entry.issuer,
            "sub": entry.subject,
            "revoked_before": entry.revoked_before,
        }
    body |= {"revoked_at": entry.revoked_at, "expires_at": entry.expires_at}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode_entry(text: str | bytes) -> Entry:
    """Parse `encode_entry`'s JSON; anything else is a `BadEntryError`."""
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEntryError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadEntryError("not an object")
    times = {name: _time(body, name) for name in ("revoked_at", "expires_at")}
    if body.get("kind") == "jti":
        return RevokedJti(_identifier(body, "issuer"), _identifier(body, "jti"), **times)
    if body.get("kind") == "sub":
        before = _time(body, "revoked_before")
        return RevokedSubject(
            _identifier(body, "issuer"), _identifier(body, "sub"), before, **times
        )
    raise BadEntryError("unknown kind")


def _identifier(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDENTIFIER_CHARS:
        raise BadEntryError(f"{name} is not a non-empty string of at most {MAX_IDENTIFIER_CHARS}")
    return value


def _time(body: Mapping[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadEntryError(f"{name} is not a number")
    return float(value)
