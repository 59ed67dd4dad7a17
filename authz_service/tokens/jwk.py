"""JWKS documents into verification key rings, dropping every key we would not trust.

A dropped key costs one log line (never key material) and nothing else: the rest of the set
still loads. Keys are imported once here, so the hot path only picks and verifies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

from authz_service.tokens.algorithms import ALGORITHMS, AlgorithmSpec
from authz_service.tokens.edwards import is_small_order
from authz_service.tokens.encoding import b64url_decode

log = logging.getLogger(__name__)

KeyIdentity = tuple[str | None, str]  # (kid, RFC 7638 thumbprint)
JoseKey = RSAKey | ECKey | OKPKey

_KEY_CLASSES: dict[str, type[JoseKey]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
# RFC 7518 §6.3.2 / §6.2.2 / RFC 8037 §2: members only a private key has. A JWKS that
# publishes them has leaked the key, so anyone can sign with it: drop it.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES = {"EC": frozenset({"P-256", "P-384", "P-521"}), "OKP": frozenset({"Ed25519"})}
MIN_RSA_BITS = 2048  # NIST SP 800-131A rev 2; ARCHITECTURE §5a
MAX_RSA_BITS = 8192  # bigger keys only make each verify slower (a CPU lever for the IdP)
_MAX_LOGGED_KID = 80


class UnusableKeyError(Exception):
    """One JWK that will not be used; `reason` goes to the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key ready to verify signatures, with the JWK members that constrain it."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    jwk: JoseKey
    thumbprint: str

    @property
    def identity(self) -> KeyIdentity:
        """Stable across refetches of the same key; changes if the kid or material does."""
        return (self.kid, self.thumbprint)

    def fits(self, spec: AlgorithmSpec) -> bool:
        """May this key verify a token signed with `spec`? (RFC 8725 §3.1)"""
        if self.kty != spec.kty or (spec.crv is not None and self.crv != spec.crv):
            return False
        # RFC 7517 §4.4: a key's `alg` names the one algorithm it is meant for ("EdDSA" and
        # "Ed25519" are one algorithm on an Ed25519 key, see algorithms._SAME_ALGORITHM).
        return self.alg is None or self.alg in spec.key_algs


class KeyRing:
    """An immutable set of verification keys with the lookups the verifier needs."""

    __slots__ = ("_candidates", "_kids", "identities", "keys")

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self.keys = tuple(keys)
        self._kids = frozenset(k.kid for k in self.keys if k.kid is not None)
        # Every (kid or None, alg) answer is computed once here, not per token.
        self._candidates: dict[tuple[str | None, str], tuple[VerificationKey, ...]] = {}
        for name, spec in ALGORITHMS.items():
            fitting = [k for k in self.keys if k.fits(spec)]
            self._candidates[(None, name)] = tuple(fitting)
            for kid in self._kids:
                self._candidates[(kid, name)] = tuple(k for k in fitting if k.kid == kid)
        self.identities = frozenset(k.identity for k in self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def has_kid(self, kid: str) -> bool:
        """Is there any key with this `kid`?"""
        return kid in self._kids

    def candidates(self, alg: str, kid: str | None) -> tuple[VerificationKey, ...]:
        """Keys that may verify `alg`: the `kid`'s own keys if one is named, else all that fit."""
        return self._candidates.get((kid, alg), ())


def load_key_ring(document: Any, *, origin: str) -> KeyRing:
    """Build a KeyRing from a parsed JWKS (RFC 7517 §5). Unusable keys are logged and skipped.

    Raises ValueError when `document` is not a JWKS at all.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS: expected an object with a "keys" array')
    loaded: list[VerificationKey] = []
    for index, member in enumerate(document["keys"]):
        try:
            loaded.append(load_key(member))
        except UnusableKeyError as exc:
            _log_dropped(origin, index, member, exc.reason)
    return KeyRing(loaded)


def _log_dropped(origin: str, index: int, member: Any, reason: str) -> None:
    kid = member.get("kid") if isinstance(member, Mapping) else None
    shown = kid[:_MAX_LOGGED_KID] if isinstance(kid, str) else None
    log.warning(
        "dropping unusable JWKS key",
        extra={"fields": {"issuer": origin, "index": index, "kid": shown, "reason": reason}},
    )


def load_key(member: Any) -> VerificationKey:
    """Turn one JWK into a VerificationKey, or raise UnusableKeyError saying why not."""
    if not isinstance(member, Mapping):
        raise UnusableKeyError("not_an_object")
    kty = member.get("kty")
    if kty == "oct":
        raise UnusableKeyError("symmetric_key")
    if not isinstance(kty, str) or kty not in _KEY_CLASSES:
        raise UnusableKeyError("unsupported_kty")
    if not _PRIVATE_MEMBERS.isdisjoint(member):
        raise UnusableKeyError("private_key_published")
    kid, alg = _optional_str(member, "kid"), _optional_str(member, "alg")
    _check_use(member)
    values = {name: _required_str(member, name) for name in _PUBLIC_MEMBERS[kty]}
    crv = values.get("crv")
    _check_alg(alg, kty, crv)
    _check_material(kty, values)
    return _import(member, kty, values, kid=kid, alg=alg)


def _optional_str(member: Mapping[str, Any], name: str) -> str | None:
    value = member.get(name)
    if value is not None and not isinstance(value, str):
        raise UnusableKeyError(f"malformed_{name}")
    return value


def _required_str(member: Mapping[str, Any], name: str) -> str:
    value = member.get(name)
    if not isinstance(value, str):
        raise UnusableKeyError(f"malformed_{name}")
    return value


def _check_use(member: Mapping[str, Any]) -> None:
    use = _optional_str(member, "use")
    if use is not None and use != "sig":
        raise UnusableKeyError("use_enc" if use == "enc" else "use_not_sig")
    ops = member.get("key_ops")
    if ops is None:
        return
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise UnusableKeyError("malformed_key_ops")
    if "verify" not in ops:  # RFC 7517 §4.3
        raise UnusableKeyError("key_ops_without_verify")


def _check_alg(alg: str | None, kty: str, crv: str | None) -> None:
    if kty in _CURVES and crv not in _CURVES[kty]:
        raise UnusableKeyError("unsupported_curve")
    if alg is None:
        return
    spec = ALGORITHMS.get(alg)
    if spec is None:
        raise UnusableKeyError("unsupported_alg")  # HS*, none, RSA-OAEP, ES256K, ...
    if spec.kty != kty or (spec.crv is not None and spec.crv != crv):
        raise UnusableKeyError("alg_key_mismatch")


def _check_material(kty: str, values: Mapping[str, str]) -> None:
    try:
        if kty == "RSA":
            bits = int.from_bytes(b64url_decode(values["n"]), "big").bit_length()
            if bits < MIN_RSA_BITS:
                raise UnusableKeyError("rsa_key_too_small")
            if bits > MAX_RSA_BITS:
                raise UnusableKeyError("rsa_key_too_large")
        elif kty == "OKP" and is_small_order(b64url_decode(values["x"])):
            raise UnusableKeyError("small_order_point")
    except ValueError:
        raise UnusableKeyError("malformed_key") from None


def _import(
    member: Mapping[str, Any],
    kty: str,
    values: Mapping[str, str],
    *,
    kid: str | None,
    alg: str | None,
) -> VerificationKey:
    # Only public members go to joserfc: x5c, x5u and anything unknown are not used.
    jwk_dict: dict[str, Any] = {"kty": kty, **values}
    for name in ("kid", "alg", "use", "key_ops"):
        if name in member:
            jwk_dict[name] = member[name]
    try:
        jwk = _KEY_CLASSES[kty].import_key(jwk_dict)
        thumbprint = jwk.thumbprint()
    except Exception:  # joserfc/cryptography raise many types for bad numbers or points
        raise UnusableKeyError("malformed_key") from None
    return VerificationKey(kid, kty, values.get("crv"), alg, jwk, thumbprint)
