"""JWKS documents into key rings: which keys load, which are dropped and why."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import OctKey

from authz_service.tokens.algorithms import ALGORITHMS
from authz_service.tokens.encoding import b64url_encode
from authz_service.tokens.jwk import KeyRing, UnusableKeyError, load_key, load_key_ring
from tests.authz_service.tokens.conftest import Keys
from tests.authz_service.tokens.factory import ed_key

SMALL_ORDER_X = b64url_encode(
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
)


def reason_for(member: Any) -> str:
    with pytest.raises(UnusableKeyError) as err:
        load_key(member)
    return err.value.reason


def test_usable_keys_load(keys: Keys) -> None:
    for k in (keys.rsa, keys.ps, keys.ec256, keys.ec384, keys.ec521, keys.ed, keys.ed_new_name):
        loaded = load_key(k.public())
        assert loaded.kid == k.kid
        assert loaded.alg == k.alg
    assert load_key(keys.rsa.public(alg=None, kid=None)).kid is None


def test_identity_is_kid_plus_rfc7638_thumbprint(keys: Keys) -> None:
    loaded = load_key(keys.rsa.public())
    assert loaded.identity == ("rsa-1", keys.rsa.jwk.thumbprint())
    assert load_key(keys.rsa.public()).identity == loaded.identity  # stable across loads
    assert load_key(keys.rsa.public(kid="other")).identity != loaded.identity


def test_symmetric_and_encryption_keys_dropped(keys: Keys) -> None:
    assert reason_for(OctKey.generate_key(256).as_dict()) == "symmetric_key"
    assert reason_for(keys.rsa.public(use="enc")) == "use_enc"
    assert reason_for(keys.rsa.public(use="other")) == "use_not_sig"
    assert reason_for(keys.rsa.public(key_ops=["encrypt"])) == "key_ops_without_verify"
    assert reason_for(keys.rsa.public(key_ops="verify")) == "malformed_key_ops"
    assert load_key(keys.rsa.public(use="sig", key_ops=["verify"])).kid == "rsa-1"


def rsa_public_jwk(bits: int) -> dict[str, str]:
    numbers = rsa.generate_private_key(65537, bits).public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "n": b64url_encode(n), "e": "AQAB", "kid": f"rsa-{bits}"}


def test_small_rsa_keys_dropped() -> None:
    assert reason_for(rsa_public_jwk(1024)) == "rsa_key_too_small"
    assert reason_for(rsa_public_jwk(2040)) == "rsa_key_too_small"
    assert load_key(rsa_public_jwk(2048)).kid == "rsa-2048"


def test_curves_other_than_the_allowed_ones_dropped(keys: Keys) -> None:
    assert reason_for(keys.ec256.public(crv="P-192", alg=None)) == "unsupported_curve"
    assert reason_for(keys.ec256.public(crv="secp256k1", alg=None)) == "unsupported_curve"
    assert reason_for(keys.ed.public(crv="Ed448", alg=None)) == "unsupported_curve"
    assert reason_for(keys.ed.public(crv="X25519", alg=None)) == "unsupported_curve"


def test_small_order_ed25519_key_dropped() -> None:
    assert reason_for(ed_key().public(x=SMALL_ORDER_X)) == "small_order_point"


def test_key_alg_must_be_a_signature_alg_that_fits(keys: Keys) -> None:
    assert reason_for(keys.rsa.public(alg="HS256")) == "unsupported_alg"
    assert reason_for(keys.rsa.public(alg="RSA-OAEP")) == "unsupported_alg"
    assert reason_for(keys.rsa.public(alg="ES256")) == "alg_key_mismatch"
    assert reason_for(keys.ec256.public(alg="ES384")) == "alg_key_mismatch"
    assert reason_for(keys.ed.public(alg="RS256")) == "alg_key_mismatch"


def test_published_private_keys_dropped(keys: Keys) -> None:
    leaked = keys.rsa.jwk.as_dict(private=True)
    assert reason_for(leaked) == "private_key_published"
    assert reason_for(keys.ed.jwk.as_dict(private=True)) == "private_key_published"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: {**k, "n": "not base64!"},
        lambda k: {**k, "n": 12345},
        lambda k: {key: v for key, v in k.items() if key != "e"},
        lambda k: {**k, "e": "AA"},
        lambda k: {**k, "kid": 7},
        lambda k: {**k, "alg": ["RS256"]},
        lambda k: {**k, "kty": "RSA2"},
        lambda k: {**k, "kty": None},
    ],
)
def test_malformed_rsa_keys_dropped(keys: Keys, mutate: Any) -> None:
    assert reason_for(mutate(keys.rsa.public()))


def test_off_curve_ec_point_dropped(keys: Keys) -> None:
    member = keys.ec256.public()
    member["y"] = member["x"]
    assert reason_for(member) == "malformed_key"


def test_not_an_object_dropped() -> None:
    assert reason_for("key") == "not_an_object"


def test_ring_logs_one_line_per_dropped_key_without_key_material(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [keys.rsa.public(use="enc", kid="enc-1"), OctKey.generate_key(256).as_dict(), 42]
    with caplog.at_level(logging.WARNING, logger="authz_service.tokens.jwk"):
        ring = load_key_ring({"keys": [keys.rsa.public(), *bad]}, origin="iss")
    assert len(ring) == 1
    assert len(caplog.records) == len(bad)
    fields = [r.fields for r in caplog.records]  # type: ignore[attr-defined]
    assert [f["reason"] for f in fields] == ["use_enc", "symmetric_key", "not_an_object"]
    assert fields[0]["kid"] == "enc-1"
    text = caplog.text + repr(fields)
    assert keys.rsa.public()["n"][:40] not in text


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"no": []}, "x", None])
def test_not_a_jwks(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWKS"):
        load_key_ring(document, origin="iss")


def test_kid_picks_exactly_that_key(keys: Keys) -> None:
    ring = load_key_ring({"keys": [keys.rsa.public(), keys.rsa_b.public()]}, origin="i")
    assert [k.kid for k in ring.candidates("RS256", "rsa-2")] == ["rsa-2"]
    assert ring.candidates("RS256", "missing") == ()
    assert ring.has_kid("rsa-1")
    assert not ring.has_kid("missing")


def test_kid_with_a_key_of_another_type_gives_no_candidate(keys: Keys) -> None:
    ring = load_key_ring({"keys": [keys.ec256.public(), keys.rsa.public(alg=None)]}, origin="i")
    assert ring.candidates("RS256", "ec-256") == ()
    assert ring.candidates("ES384", "ec-256") == ()  # right type, wrong curve
    assert ring.candidates("PS256", "rsa-1") != ()  # no key alg: any RSA alg fits


def test_without_kid_only_fitting_keys_are_candidates(keys: Keys) -> None:
    ring = load_key_ring(
        {
            "keys": [
                keys.rsa.public(kid=None),
                keys.ec256.public(kid=None),
                keys.ed.public(kid=None),
            ]
        },
        origin="i",
    )
    assert [k.kty for k in ring.candidates("RS256", None)] == ["RSA"]
    assert [k.kty for k in ring.candidates("ES256", None)] == ["EC"]
    assert ring.candidates("ES512", None) == ()
    assert [k.kty for k in ring.candidates("EdDSA", None)] == ["OKP"]
    assert [k.kty for k in ring.candidates("Ed25519", None)] == ["OKP"]  # RFC 9864: same alg
    assert ring.candidates("PS256", None) == ()  # the RSA key says alg RS256
    assert ring.candidates("HS256", None) == ()


@pytest.mark.parametrize("name", ["rsa", "ec256", "ec384", "ec521", "ed"])
def test_keys_without_alg_fit_only_algorithms_of_their_type(keys: Keys, name: str) -> None:
    published = getattr(keys, name).public(alg=None)
    ring = load_key_ring({"keys": [published]}, origin="i")
    (key,) = ring.keys
    assert key.alg is None
    fitting = {alg for alg, spec in ALGORITHMS.items() if key.fits(spec)}
    expected = {
        "rsa": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
        "ec256": {"ES256"},
        "ec384": {"ES384"},
        "ec521": {"ES512"},
        "ed": {"EdDSA", "Ed25519"},
    }[name]
    assert fitting == expected
    for alg in ALGORITHMS:
        by_kid = ring.candidates(alg, published["kid"])
        assert (by_kid != ()) == (alg in expected)


def test_empty_ring_is_falsy() -> None:
    assert not KeyRing([])
