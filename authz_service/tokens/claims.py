"""JWT claims checks (RFC 7519 §4.1, RFC 8725 §3.8-3.9) and the Principal they produce.

Pure functions of the claims set, the issuer's rules and `now`. Boundaries, with `L` the
leeway (RFC 7519 §4.1.4: "MAY provide for some small leeway ... to account for clock skew"):

    expired         now >= exp + L          (exp is exclusive: "on or after ... MUST NOT be
                                             accepted")
    too old         now >= iat + max_age + L (same convention as exp)
    not yet valid   now <  nbf - L           (nbf is inclusive: "on or after" is accepted)
    iat in future   now <  iat - L           (same convention as nbf)

So a token is usable on [not_before, not_after), which the verified-token cache re-checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authz_service.principal import Principal
from authz_service.tokens.compact import media_type
from authz_service.tokens.errors import InvalidToken
from authz_service.tokens.settings import IssuerSettings

MAX_CLAIM_DEPTH = 32  # deeper claims sets are refused rather than frozen recursively


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """An issuer's claim rules, precompiled from its settings."""

    issuer: str
    audiences: frozenset[str]
    leeway: float
    max_age: float | None
    required_typ: str | None  # already normalised with media_type()
    roles_path: tuple[str, ...]
    client_id_claims: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: IssuerSettings) -> ClaimRules:
        """Precompile the rules of one issuer."""
        typ = settings.required_typ
        return cls(
            issuer=settings.issuer,
            audiences=frozenset(settings.audiences),
            leeway=float(settings.leeway_seconds),
            max_age=None
            if settings.max_token_age_seconds is None
            else float(settings.max_token_age_seconds),
            required_typ=None if typ is None else media_type(typ),
            roles_path=tuple(settings.roles_claim.split(".")),
            client_id_claims=settings.client_id_claims,
        )


@dataclass(frozen=True, slots=True)
class Validity:
    """When a verified token may be used: not_before <= now < not_after."""

    not_before: float
    not_after: float


def check_typ(header: Mapping[str, Any], rules: ClaimRules) -> None:
    """RFC 9068 §4 / RFC 8725 §3.11: explicit typing, when the issuer requires it."""
    if rules.required_typ is None:
        return
    typ = header.get("typ")
    if not isinstance(typ, str) or media_type(typ) != rules.required_typ:
        raise InvalidToken("typ_mismatch")


def check_times(claims: Mapping[str, Any], rules: ClaimRules, now: float) -> Validity:
    """Check exp/nbf/iat (and max age) against `now`; return the token's usable window."""
    exp = _time_claim(claims, "exp")
    if exp is None:
        # RFC 7519 makes exp optional; we do not (ARCHITECTURE §5a): no token lives forever.
        raise InvalidToken("missing_exp")
    nbf, iat = _time_claim(claims, "nbf"), _time_claim(claims, "iat")
    leeway = rules.leeway
    not_after = exp + leeway
    not_before = -math.inf
    if now >= not_after:
        raise InvalidToken("expired")
    if nbf is not None:
        not_before = nbf - leeway
        if now < not_before:
            raise InvalidToken("not_yet_valid")
    if iat is not None:
        not_before = max(not_before, iat - leeway)
        if now < iat - leeway:
            raise InvalidToken("iat_in_future")
    if rules.max_age is not None:
        if iat is None:
            raise InvalidToken("missing_iat")  # a maximum age cannot be checked without iat
        not_after = min(not_after, iat + rules.max_age + leeway)
        if now >= not_after:
            raise InvalidToken("too_old")
    return Validity(not_before, not_after)


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    # RFC 7519 §2 NumericDate is a JSON number. bool is an int subclass in Python, and
    # "1700000000" is a string: both are refused rather than coerced. An absent claim is
    # None; a present `null` is a claim of the wrong type, not an absent one (otherwise
    # `"nbf": null` would switch the not-before check off).
    if name not in claims:
        return None
    value = claims[name]
    if value is None or type(value) is bool or not isinstance(value, (int, float)):
        raise InvalidToken("bad_claim_type")
    try:
        as_float = float(value)
    except OverflowError:
        raise InvalidToken("bad_claim_type") from None
    return as_float


def check_identity(claims: Mapping[str, Any], rules: ClaimRules) -> tuple[str, tuple[str, ...]]:
    """Check iss, aud and sub; return (subject, audiences)."""
    if claims.get("iss") != rules.issuer:  # RFC 7519 §4.1.1, exact string comparison
        raise InvalidToken("wrong_issuer")
    audiences = _audiences(claims.get("aud"))
    if rules.audiences.isdisjoint(audiences):
        raise InvalidToken("wrong_audience")  # RFC 7519 §4.1.3: "MUST be rejected"
    return _subject(claims), audiences


def _subject(claims: Mapping[str, Any]) -> str:
    # RFC 7519 §4.1.2: sub is a case-sensitive string. Upstreams and policies compare it
    # byte for byte (`params.user_id == token.sub`), so " alice" or "alice\n" would be a
    # second identity that looks like the first in logs: refused, as is a blank one.
    if "sub" not in claims or claims["sub"] == "":
        raise InvalidToken("missing_sub")
    sub = claims["sub"]
    if not isinstance(sub, str):
        raise InvalidToken("bad_claim_type")
    if not sub.strip() or sub != sub.strip():
        raise InvalidToken("bad_sub")
    return sub


def _audiences(aud: Any) -> tuple[str, ...]:
    # RFC 7519 §4.1.3: "an array of case-sensitive strings" or "a single case-sensitive
    # string". Any other shape is refused; an absent aud matches no audience.
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise InvalidToken("bad_claim_type")


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (RFC 8693 §4.2 / RFC 9068 §2.2.3: space-delimited string) and
    `scp` (a string likewise, or an array of strings, as Okta and Entra ID emit).

    A claim of any other shape, including an array holding a non-string, contributes no
    scopes at all: the token stays valid but authorizes nothing scope-gated (fails closed).
    """
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(part for part in value.split(" ") if part)
        elif name == "scp" and isinstance(value, list) and _all_strings(value):
            found.update(part for part in value if part)
    return frozenset(found)


def _all_strings(values: list[Any]) -> bool:
    return all(isinstance(v, str) for v in values)


def roles_of(claims: Mapping[str, Any], path: tuple[str, ...]) -> frozenset[str]:
    """Roles at a dot path (e.g. realm_access.roles); anything but an array of strings is none."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return frozenset()
        value = value.get(part)
    if isinstance(value, list) and _all_strings(value):
        return frozenset(value)
    return frozenset()


def client_id_of(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of `names` holding a non-empty string (RFC 9068 §2.2 client_id, OIDC azp)."""
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def freeze(value: Any, depth: int = 0) -> Any:
    """A read-only deep copy: objects become MappingProxyType, arrays tuples.

    Principals are shared through the verified-token cache, so nothing downstream may be
    able to change what a later request sees.
    """
    if depth > MAX_CLAIM_DEPTH:
        raise InvalidToken("malformed")
    if type(value) is dict:
        return MappingProxyType(
            {k: freeze(v, depth + 1) if type(v) in _CONTAINERS else v for k, v in value.items()}
        )
    if type(value) is list:
        return tuple(freeze(v, depth + 1) if type(v) in _CONTAINERS else v for v in value)
    return value


_CONTAINERS = (dict, list)  # what a JSON parse can produce that is mutable


def build_principal(
    claims: Mapping[str, Any],
    rules: ClaimRules,
    *,
    key_id: str | None,
    algorithm: str,
    now: float,
) -> tuple[Principal, Validity]:
    """Run every claims check and build the Principal with its usable window."""
    validity = check_times(claims, rules, now)
    subject, audiences = check_identity(claims, rules)
    principal = Principal(
        subject=subject,
        issuer=rules.issuer,
        audiences=audiences,
        scopes=scopes_of(claims),
        roles=roles_of(claims, rules.roles_path),
        claims=freeze(claims),
        expires_at=float(claims["exp"]),
        client_id=client_id_of(claims, rules.client_id_claims),
        key_id=key_id,
        algorithm=algorithm,
    )
    return principal, validity
