"""Reading an RFC 7662 introspection answer: bytes in, a Principal or a refusal out.

Pure: no I/O, no clock of its own (`now` is passed in). The rules, from RFC 7662 §2.2
and ARCHITECTURE §5a where they carry over from JWTs:

- The body is one JSON object (UTF-8, no duplicate members, finite numbers); anything
  else is the endpoint misbehaving: `unavailable`, not the token's fault, never cached.
- `active` must be exactly `true`; `false` is `inactive`; any other value is garbage.
- `iss`, when present, equals the configured issuer exactly; `aud` (string or array of
  strings) contains a configured audience; `exp`/`nbf`/`iat` are numbers, checked with
  the leeway; `token_type`, when present, is an accepted one (a refresh token is not an
  access token); `cnf` means the token is bound to a key we cannot check: refused.
- `sub` is a non-empty string; without one, `client_id` stands for the subject only
  when configured (client-credentials tokens name no user).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz_service.introspection.errors import IntrospectionRefused
from authz_service.principal import Principal
from authz_service.tokens.claims import freeze, roles_of, scopes_of
from authz_service.tokens.encoding import loads_strict

# Principal.algorithm of a principal an introspected token stands for.
INTROSPECTION_ALGORITHM = "introspection"


@dataclass(frozen=True, slots=True)
class AnswerRules:
    """What the answer must say, precompiled from IntrospectionIssuerSettings."""

    issuer: str
    audiences: frozenset[str]
    allow_missing_audience: bool
    leeway_seconds: float
    roles_path: tuple[str, ...]
    client_id_as_subject: bool
    accepted_token_types: frozenset[str]  # lower-cased


def parse_answer(body: bytes) -> dict[str, Any]:
    """The answer's JSON object; IntrospectionRefused('unavailable') if it is not one."""
    try:
        value = loads_strict(body)
    except ValueError:  # DuplicateMemberError is one
        raise IntrospectionRefused("unavailable") from None
    if not isinstance(value, dict) or type(value.get("active")) is not bool:
        raise IntrospectionRefused("unavailable")
    return value


def principal_from_answer(
    answer: Mapping[str, Any], rules: AnswerRules, *, now: float, expires_if_absent: float
) -> Principal:
    """The Principal an active answer stands for; IntrospectionRefused otherwise. An answer
    without `exp` (RFC 7662 makes it optional) expires at `expires_if_absent`."""
    if answer.get("active") is not True:
        raise IntrospectionRefused("inactive")
    _check_issuer(answer, rules)
    _check_binding(answer, rules)
    expires_at = _check_times(answer, rules, now)
    audiences = _check_audience(answer, rules)
    client_id = _optional_string(answer, "client_id")
    return Principal(
        subject=_subject(answer, client_id, rules),
        issuer=rules.issuer,
        audiences=audiences,
        scopes=scopes_of(answer),
        roles=roles_of(answer, rules.roles_path),
        claims=freeze(dict(answer)),
        expires_at=expires_if_absent if expires_at is None else expires_at,
        client_id=client_id,
        algorithm=INTROSPECTION_ALGORITHM,
    )


def _check_issuer(answer: Mapping[str, Any], rules: AnswerRules) -> None:
    iss = answer.get("iss")
    if iss is not None and iss != rules.issuer:  # exact: no case folding, no slash games
        raise IntrospectionRefused("wrong_issuer")


def _check_binding(answer: Mapping[str, Any], rules: AnswerRules) -> None:
    token_type = answer.get("token_type")
    if token_type is not None:
        if not isinstance(token_type, str):
            raise IntrospectionRefused("bad_claim_type")
        if token_type.lower() not in rules.accepted_token_types:
            raise IntrospectionRefused("wrong_token_type")
    # RFC 7800 / RFC 9449 §6.2 / RFC 8705 §3.2: `cnf` binds the token to a key the client
    # must prove it holds; a bearer header alone proves nothing.
    if "cnf" in answer:
        raise IntrospectionRefused("sender_constrained")


def _check_times(answer: Mapping[str, Any], rules: AnswerRules, now: float) -> float | None:
    exp, nbf = _time(answer, "exp"), _time(answer, "nbf")
    _time(answer, "iat")  # only its type matters here
    if exp is not None and now >= exp + rules.leeway_seconds:
        raise IntrospectionRefused("expired")
    if nbf is not None and nbf > now + rules.leeway_seconds:
        raise IntrospectionRefused("not_yet_valid")
    return exp


def _time(answer: Mapping[str, Any], name: str) -> float | None:
    value = answer.get(name)
    if value is None and name not in answer:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):  # true is an int too
        raise IntrospectionRefused("bad_claim_type")
    return float(value)


def _check_audience(answer: Mapping[str, Any], rules: AnswerRules) -> tuple[str, ...]:
    aud = answer.get("aud")
    if aud is None and "aud" not in answer:
        if rules.allow_missing_audience:
            return ()
        raise IntrospectionRefused("wrong_audience")
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        raise IntrospectionRefused("bad_claim_type")
    if rules.audiences.isdisjoint(audiences):
        raise IntrospectionRefused("wrong_audience")
    return audiences


def _optional_string(answer: Mapping[str, Any], name: str) -> str | None:
    value = answer.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise IntrospectionRefused("bad_claim_type")
    return value


def _subject(answer: Mapping[str, Any], client_id: str | None, rules: AnswerRules) -> str:
    sub = _optional_string(answer, "sub")
    if sub is not None:
        return sub
    if rules.client_id_as_subject and client_id is not None:
        return client_id
    raise IntrospectionRefused("missing_subject")
