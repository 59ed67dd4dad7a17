"""The authenticated caller, as the token verifier hands it to the policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified token's identity. `claims` is the whole (read-only) payload."""

    subject: str
    issuer: str
    audiences: tuple[str, ...]
    scopes: frozenset[str]
    roles: frozenset[str]
    claims: Mapping[str, Any]
    expires_at: float
    client_id: str | None = None
    key_id: str | None = None
    algorithm: str = ""
