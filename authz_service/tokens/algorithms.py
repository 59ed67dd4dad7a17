"""The signature algorithms we verify, what key each one needs, and joserfc's model for it.

RFC 8725 §3.1: the algorithm must be bound to the key. Each entry says exactly which key
type (and curve) may verify it, so an RS256 token is never checked against an EC key, nor
an HS256 token against anything at all (HS* has no entry).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import get_args

from joserfc.errors import SecurityWarning
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

from authz_service.tokens.settings import JwsAlgorithm


@dataclass(frozen=True, slots=True)
class AlgorithmSpec:
    """One JWS `alg`: the key it requires and the joserfc model that verifies it."""

    name: str
    kty: str  # RFC 7517 key type: RSA, EC or OKP
    crv: str | None  # required curve; None for RSA
    model: JWSAlgModel
    key_algs: frozenset[str]  # JWK `alg` values a key may carry to be used for this alg


# RFC 7518 §3.3-3.5 (RS*, ES*, PS*), RFC 8037 §3.1 (EdDSA), RFC 9864 §2.2 (Ed25519).
_KEY_REQUIREMENTS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    # Only the Ed25519 curve: we drop Ed448 keys at load, so EdDSA means Ed25519 here.
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
}


# RFC 9864 §2.2: "Ed25519" is the fully-specified name of EdDSA over Ed25519, the very same
# computation the polymorphic "EdDSA" performs with an Ed25519 key. So a key published with
# either name serves tokens labelled with either (the curve is checked separately). Every
# other alg must match a key's `alg` exactly: RS256 and PS256 are different algorithms.
_SAME_ALGORITHM = {
    "EdDSA": frozenset({"EdDSA", "Ed25519"}),
    "Ed25519": frozenset({"EdDSA", "Ed25519"}),
}


def allow_list(configured: Iterable[str]) -> frozenset[str]:
    """The token `alg` values an issuer's `algorithms` accept: each name, plus its other
    name where RFC 9864 gave one algorithm two (EdDSA on Ed25519 = Ed25519). A provider
    that moves to the fully-specified name is not locked out by `algorithms: [EdDSA]`."""
    accepted: set[str] = set()
    for name in configured:
        accepted |= _SAME_ALGORITHM.get(name, {name})
    return frozenset(accepted)


def _build() -> MappingProxyType[str, AlgorithmSpec]:
    names = get_args(JwsAlgorithm)
    assert set(names) == set(_KEY_REQUIREMENTS), "settings and algorithm table disagree"
    registry = JWSRegistry(algorithms=names)
    specs: dict[str, AlgorithmSpec] = {}
    # joserfc warns that "EdDSA" is deprecated by RFC 9864; it is still what most IdPs
    # emit, and accepting it is an explicit per-issuer choice, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        for name in names:
            kty, crv = _KEY_REQUIREMENTS[name]
            key_algs = _SAME_ALGORITHM.get(name, frozenset({name}))
            specs[name] = AlgorithmSpec(name, kty, crv, registry.get_alg(name), key_algs)
    return MappingProxyType(specs)


ALGORITHMS = _build()
