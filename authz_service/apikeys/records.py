"""KeyRecord: what is stored for one API key, and its Redis hash fields.

One Redis hash per key (`<key_prefix><key id>`), every field a string:

    v            record format version ("1")
    prefix       the key's prefix (`eg_live`)
    pepper       the id of the pepper the hash was made with
    hash         hex HMAC-SHA-256 (authz_service.apikeys.hashing); never the secret
    subject      the principal's `sub`
    scopes       space-separated, sorted
    roles        space-separated, sorted
    tenant, plan strings ("" when unset)
    created, expires                 Unix seconds
    last_used, revoked, valid_until  Unix seconds, absent when unset
    replaced_by  the successor's key id after a rotation, absent when none
    rotated_from the predecessor's key id, absent when none

A record that is missing a field or has one of the wrong form is treated as unknown
(refused), never as a key with fewer restrictions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

FORMAT_VERSION = "1"
# Scopes, roles, subject, tenant and plan: printable, no whitespace (scopes and roles are
# stored space-separated; RFC 6749 §3.3 scope-tokens exclude spaces, quotes and backslash).
_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")
_TEXT = re.compile(r"^[\x21-\x7e]{0,256}$")


def check_token(kind: str, value: str) -> str:
    """A scope, role or subject, if usable; else ValueError naming what is wrong."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"{kind} {value!r} must be 1-256 printable ASCII characters, "
            "no space, quote or backslash"
        )
    return value


def check_label(kind: str, value: str) -> str:
    """A tenant or plan ("" allowed)."""
    if not _TEXT.match(value):
        raise ValueError(f"{kind} {value!r} must be at most 256 printable ASCII, no space")
    return value


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key's stored metadata. `digest` is a keyed hash, left out of repr all the same."""

    key_id: str
    prefix: str
    pepper_id: str
    digest: str
    subject: str
    scopes: frozenset[str]
    roles: frozenset[str]
    tenant: str
    plan: str
    created: float
    expires: float
    last_used: float | None = None
    revoked: float | None = None
    valid_until: float | None = None
    replaced_by: str | None = None
    rotated_from: str | None = None

    def __repr__(self) -> str:
        return f"KeyRecord(key_id={self.key_id!r}, subject={self.subject!r}, ...)"

    def ends_at(self) -> float:
        """When the key stops being accepted (expiry, or the end of a rotation overlap)."""
        if self.valid_until is None:
            return self.expires
        return min(self.expires, self.valid_until)

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields (optional ones only when set)."""
        fields = {
            "v": FORMAT_VERSION,
            "prefix": self.prefix,
            "pepper": self.pepper_id,
            "hash": self.digest,
            "subject": self.subject,
            "scopes": " ".join(sorted(self.scopes)),
            "roles": " ".join(sorted(self.roles)),
            "tenant": self.tenant,
            "plan": self.plan,
            "created": _seconds(self.created),
            "expires": _seconds(self.expires),
        }
        optional = {
            "last_used": self.last_used,
            "revoked": self.revoked,
            "valid_until": self.valid_until,
        }
        fields.update({name: _seconds(v) for name, v in optional.items() if v is not None})
        if self.replaced_by is not None:
            fields["replaced_by"] = self.replaced_by
        if self.rotated_from is not None:
            fields["rotated_from"] = self.rotated_from
        return fields

    def public_view(self) -> dict[str, object]:
        """What `show` and `list` print: everything but the hash."""
        return {
            "key_id": self.key_id,
            "prefix": self.prefix,
            "pepper": self.pepper_id,
            "subject": self.subject,
            "scopes": sorted(self.scopes),
            "roles": sorted(self.roles),
            "tenant": self.tenant,
            "plan": self.plan,
            "created": self.created,
            "expires": self.expires,
            "last_used": self.last_used,
            "revoked": self.revoked,
            "valid_until": self.valid_until,
            "replaced_by": self.replaced_by,
            "rotated_from": self.rotated_from,
        }


def record_from_fields(key_id: str, fields: Mapping[str, str]) -> KeyRecord | None:
    """The record a Redis hash describes, or None if it is absent or not well formed."""
    if fields.get("v") != FORMAT_VERSION:
        return None
    try:
        return KeyRecord(
            key_id=key_id,
            prefix=fields["prefix"],
            pepper_id=fields["pepper"],
            digest=fields["hash"],
            subject=check_token("subject", fields["subject"]),
            scopes=_words("scope", fields["scopes"]),
            roles=_words("role", fields["roles"]),
            tenant=check_label("tenant", fields["tenant"]),
            plan=check_label("plan", fields["plan"]),
            created=_number(fields["created"]),
            expires=_number(fields["expires"]),
            last_used=_optional_number(fields.get("last_used")),
            revoked=_optional_number(fields.get("revoked")),
            valid_until=_optional_number(fields.get("valid_until")),
            replaced_by=fields.get("replaced_by"),
            rotated_from=fields.get("rotated_from"),
        )
    except (KeyError, ValueError):
        return None


def _words(kind: str, text: str) -> frozenset[str]:
    return frozenset(check_token(kind, word) for word in text.split(" ") if word)


def _number(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _optional_number(text: str | None) -> float | None:
    return None if text is None else _number(text)


def _seconds(value: float) -> str:
    return repr(round(value, 3))
