from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authz_service.jwks import StaticKeySource
from authz_service.jwks.verification import FetchingVerifier
from authz_service.principal import Principal
from authz_service.tokens import REASONS, InvalidToken, KeyRing, TokenLimits, load_key_ring
from authz_service.tokens import verifier as verifier_module
from authz_service.tokens.encoding import b64url_decode, b64url_encode
from authz_service.tokens.settings import IssuerSettings
from authz_service.tokens.verifier import NeedKeys, TokenVerifier
from sidecar_runtime.clock import ManualClock
from tests.authz_service.tokens.conftest import Keys, issuer
from tests.authz_service.tokens.factory import (
    AUDIENCE,
    ISSUER,
    NOW,
    SigningKey,
    claims,
    ec_key,
    encode_json,
    jwks,
    mint,
    rsa_key,
)


class CountingSource(StaticKeySource):
    """A static source that counts how often the verifier looked at its keys."""

    def __init__(self, ring: KeyRing | None) -> None:
        super().__init__(ring)
        self.lookups = 0

    def current(self) -> KeyRing | None:
        self.lookups += 1
        return self.ring


def ring_of(*keys: SigningKey | dict[str, Any]) -> KeyRing:
    return load_key_ring(jwks(*keys), origin=ISSUER)


def make_verifier(
    clock: ManualClock,
    source: StaticKeySource,
    settings: IssuerSettings | None = None,
    **kw: Any,
) -> FetchingVerifier:
    return FetchingVerifier([settings or issuer()], clock=clock, key_sources={ISSUER: source}, **kw)


@pytest.fixture
def source(keys: Keys) -> CountingSource:
    return CountingSource(
        ring_of(keys.rsa, keys.ps, keys.ec256, keys.ec384, keys.ec521, keys.ed, keys.ed_new_name)
    )


@pytest.fixture
def verifier(clock: ManualClock, source: CountingSource) -> FetchingVerifier:
    return make_verifier(clock, source)


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every signature check the verifier performs (by key id)."""
    calls: list[str] = []
    real = verifier_module._signature_ok

    def counting(model: Any, parsed: Any, key: Any) -> bool:
        calls.append(str(key.kid))
        return real(model, parsed, key)

    monkeypatch.setattr(verifier_module, "_signature_ok", counting)
    return calls


async def reason_of(v: FetchingVerifier, token: Any) -> str:
    with pytest.raises(InvalidToken) as err:
        await v.verify(token)
    return err.value.reason


# -- valid tokens for every algorithm family ---------------------------------------------


@pytest.mark.parametrize("name", ["rsa", "ps", "ec256", "ec384", "ec521", "ed", "ed_new_name"])
async def test_valid_tokens(verifier: FetchingVerifier, keys: Keys, name: str) -> None:
    key: SigningKey = getattr(keys, name)
    principal = await verifier.verify(mint(key, claims()))
    assert principal.subject == "user-123"
    assert principal.issuer == ISSUER
    assert principal.audiences == (AUDIENCE,)
    assert principal.scopes == {"users:read", "users:write"}
    assert principal.roles == {"admin"}
    assert principal.client_id == "demo-client"
    assert principal.key_id == key.kid
    assert principal.algorithm == key.alg
    assert principal.expires_at == NOW + 300
    assert principal.claims["sub"] == "user-123"


async def test_token_without_kid_tries_only_fitting_keys(
    clock: ManualClock, keys: Keys, verify_calls: list[str]
) -> None:
    ring = ring_of(
        keys.ec256.public(kid=None), keys.rsa_b.public(kid=None), keys.rsa.public(kid=None)
    )
    v = make_verifier(clock, StaticKeySource(ring))
    principal = await v.verify(mint(SigningKey(keys.rsa.jwk, "RS256", None), claims()))
    assert principal.key_id is None
    assert verify_calls == ["None", "None"]  # both RSA keys, never the EC key


async def test_unknown_issuer(verifier: FetchingVerifier, keys: Keys) -> None:
    for iss in ("https://evil.example", ISSUER + "/", None, 7):
        assert await reason_of(verifier, mint(keys.rsa, claims(iss=iss))) == "unknown_issuer"


async def test_bad_signature(verifier: FetchingVerifier, keys: Keys) -> None:
    genuine = mint(keys.rsa, claims())
    head, body, sig = genuine.split(".")
    _, escalated, _ = mint(keys.rsa, claims(sub="admin")).split(".")
    assert await reason_of(verifier, f"{head}.{escalated}.{sig}") == "bad_signature"
    flipped = bytearray(b64url_decode(sig))
    flipped[0] ^= 1
    assert await reason_of(verifier, f"{head}.{body}.{b64url_encode(bytes(flipped))}") == (
        "bad_signature"
    )
    short = b64url_encode(b64url_decode(sig)[:-1])
    assert await reason_of(verifier, f"{head}.{body}.{short}") == "bad_signature"


async def test_signature_from_a_key_with_the_same_kid_but_other_material(
    verifier: FetchingVerifier,
) -> None:
    impostor = rsa_key("rsa-1")
    assert await reason_of(verifier, mint(impostor, claims())) == "bad_signature"


# -- algorithm rules ----------------------------------------------------------------------


async def test_alg_must_be_in_the_issuers_allow_list(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(
        clock, StaticKeySource(ring_of(keys.rsa, keys.ed)), issuer(algorithms=["RS256"])
    )
    assert (await v.verify(mint(keys.rsa, claims()))).algorithm == "RS256"
    assert await reason_of(v, mint(keys.ed, claims())) == "alg_not_allowed"


async def test_none_refused(verifier: FetchingVerifier, keys: Keys) -> None:
    unsigned = mint(None, claims(), header={"kid": "rsa-1"})
    assert unsigned.endswith(".")
    assert await reason_of(verifier, unsigned) == "malformed"  # empty signature
    with_sig = unsigned + "AA"
    assert await reason_of(verifier, with_sig) == "alg_not_allowed"
    for alg in ("None", "NONE", "nOnE"):
        token = mint(keys.rsa, claims(), header={"alg": alg})
        assert await reason_of(verifier, token) == "alg_not_allowed"


async def test_hs256_with_the_rsa_public_key_as_secret_refused(
    verifier: FetchingVerifier, keys: Keys, verify_calls: list[str]
) -> None:
    pem = keys.rsa.jwk.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, json.dumps(keys.rsa.public()).encode()):
        forged = mint(None, claims(), alg="HS256", header={"kid": "rsa-1"}, hmac_secret=secret)
        assert await reason_of(verifier, forged) == "alg_not_allowed"
    assert verify_calls == []


async def test_rs256_token_against_an_ec_key(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.ec256)))
    forged = mint(keys.rsa, claims(), header={"kid": "ec-256"})
    assert await reason_of(v, forged) == "alg_key_mismatch"
    no_kid = mint(SigningKey(keys.rsa.jwk, "RS256", None), claims())
    assert await reason_of(v, no_kid) == "unknown_key"


async def test_es256_token_against_a_p384_key(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.ec384)))
    assert await reason_of(v, mint(keys.ec256, claims(), header={"kid": "ec-384"})) == (
        "alg_key_mismatch"
    )


async def test_key_alg_member_must_agree_with_the_token_alg(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.rsa)))  # key says alg RS256
    assert await reason_of(v, mint(keys.rsa, claims(), alg="PS256")) == "alg_key_mismatch"
    ec_es384 = make_verifier(clock, StaticKeySource(ring_of(keys.ec384.public(crv="P-384"))))
    assert await reason_of(ec_es384, mint(keys.ec384, claims(), alg="ES256")) == "alg_key_mismatch"


async def test_eddsa_and_ed25519_names_are_one_algorithm(clock: ManualClock, keys: Keys) -> None:
    # RFC 9864: a key published as "EdDSA" verifies "Ed25519" tokens and vice versa.
    old_name = make_verifier(clock, StaticKeySource(ring_of(keys.ed)))  # key alg EdDSA
    assert (await old_name.verify(mint(keys.ed, claims(), alg="Ed25519"))).algorithm == "Ed25519"
    new_name = make_verifier(clock, StaticKeySource(ring_of(keys.ed_new_name)))  # key alg Ed25519
    assert (await new_name.verify(mint(keys.ed_new_name, claims(), alg="EdDSA"))).algorithm == (
        "EdDSA"
    )


@pytest.mark.parametrize("allowed", ["EdDSA", "Ed25519"])
@pytest.mark.parametrize("token_alg", ["EdDSA", "Ed25519"])
@pytest.mark.parametrize("key_alg", ["EdDSA", "Ed25519", None])
async def test_either_eddsa_name_in_the_allow_list_accepts_both(
    clock: ManualClock, keys: Keys, allowed: str, token_alg: str, key_alg: str | None
) -> None:
    # RFC 9864 §2.2: "Ed25519" is EdDSA over Ed25519. A provider that signs with the new
    # name must not be refused by `algorithms: [EdDSA]`, nor the reverse.
    ring = ring_of(keys.ed.public(alg=key_alg))
    v = make_verifier(clock, StaticKeySource(ring), issuer(algorithms=[allowed]))
    assert (await v.verify(mint(keys.ed, claims(), alg=token_alg))).algorithm == token_alg


async def test_an_eddsa_name_does_not_allow_other_algorithms(
    clock: ManualClock, keys: Keys
) -> None:
    ring = ring_of(keys.ed, keys.rsa, keys.ec256)
    for allowed in ("EdDSA", "Ed25519"):
        v = make_verifier(clock, StaticKeySource(ring), issuer(algorithms=[allowed]))
        assert await reason_of(v, mint(keys.rsa, claims())) == "alg_not_allowed"
        assert await reason_of(v, mint(keys.ec256, claims())) == "alg_not_allowed"
    rsa_only = make_verifier(clock, StaticKeySource(ring), issuer(algorithms=["RS256"]))
    assert await reason_of(rsa_only, mint(keys.ed, claims(), alg="Ed25519")) == "alg_not_allowed"


async def test_ed25519_names_need_an_ed25519_key(clock: ManualClock, keys: Keys) -> None:
    # Signed with the RSA key's kid but labelled Ed25519: the RSA key never verifies it.
    ring = ring_of(keys.rsa.public(alg=None))
    v = make_verifier(clock, StaticKeySource(ring), issuer(algorithms=["EdDSA"]))
    forged = mint(keys.ed, claims(), alg="Ed25519", header={"kid": "rsa-1"})
    assert await reason_of(v, forged) == "alg_key_mismatch"


# -- a JWK without `alg` is still bound to its type (RFC 8725 §3.1) ------------------------


@pytest.mark.parametrize(
    ("key_name", "token_key", "token_alg"),
    [
        ("rsa", "ed", "EdDSA"),  # RSA key, EdDSA token
        ("rsa", "ed", "Ed25519"),
        ("rsa", "ec256", "ES256"),
        ("ed", "rsa", "RS256"),  # OKP key, RSA token
        ("ed", "rsa", "PS256"),
        ("ed", "ec256", "ES256"),
        ("ec256", "rsa", "RS256"),  # EC key, RSA token
        ("ec256", "ed", "EdDSA"),
        ("ec256", "ec384", "ES384"),  # P-256 key, P-384 token
    ],
)
async def test_key_without_alg_only_verifies_algorithms_of_its_type(
    clock: ManualClock,
    keys: Keys,
    verify_calls: list[str],
    key_name: str,
    token_key: str,
    token_alg: str,
) -> None:
    published = getattr(keys, key_name).public(alg=None)
    assert "alg" not in published
    v = make_verifier(clock, StaticKeySource(ring_of(published)))
    kid = published["kid"]
    signer = getattr(keys, token_key)
    with_kid = mint(signer, claims(), alg=token_alg, header={"kid": kid})
    assert await reason_of(v, with_kid) == "alg_key_mismatch"
    without_kid = mint(SigningKey(signer.jwk, token_alg, None), claims())
    assert await reason_of(v, without_kid) == "unknown_key"
    # Refused on the key's type alone: no signature check was even attempted.
    assert verify_calls == []


async def test_key_without_alg_verifies_every_algorithm_of_its_type(
    clock: ManualClock, keys: Keys
) -> None:
    ring = ring_of(keys.rsa.public(alg=None))
    rsa = make_verifier(
        clock, StaticKeySource(ring), issuer(algorithms=["RS256", "PS256", "RS512"])
    )
    for alg in ("RS256", "PS256", "RS512"):
        assert (await rsa.verify(mint(keys.rsa, claims(), alg=alg))).algorithm == alg


async def test_embedded_jwk_and_key_urls_are_never_used(
    verifier: FetchingVerifier, source: CountingSource
) -> None:
    attacker = rsa_key("attacker")
    header = {
        "jwk": attacker.public(),
        "jku": "https://evil.example/jwks",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIBIjANBgkq"],
    }
    assert await reason_of(verifier, mint(attacker, claims(), header=header)) == "unknown_key"
    assert source.unknown_kid_refreshes == 1  # it asked the configured source, nobody else
    kidless = mint(SigningKey(attacker.jwk, "RS256", None), claims(), header=header)
    assert await reason_of(verifier, kidless) == "bad_signature"


async def test_unknown_kid_asks_the_source_once(verifier: FetchingVerifier, keys: Keys) -> None:
    stranger = rsa_key("stranger")
    assert await reason_of(verifier, mint(stranger, claims())) == "unknown_key"


async def test_keys_unavailable_when_no_set_was_ever_loaded(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(None))
    assert await reason_of(v, mint(keys.rsa, claims())) == "keys_unavailable"


# -- header and claims rules through the whole pipeline ------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"crit": ["exp"], "exp": 1}, "crit_unsupported"),
        ({"cty": "JWT"}, "nested_jwt"),
        ({"b64": False}, "b64_unsupported"),
    ],
)
async def test_header_rules(
    verifier: FetchingVerifier, keys: Keys, header: dict[str, Any], expected: str
) -> None:
    assert await reason_of(verifier, mint(keys.rsa, claims(), header=header)) == expected


async def test_typ_required(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.rsa)), issuer(required_typ="at+jwt"))
    assert await reason_of(v, mint(keys.rsa, claims())) == "typ_mismatch"
    good = mint(keys.rsa, claims(), header={"typ": "application/AT+JWT"})
    assert (await v.verify(good)).subject == "user-123"


async def test_duplicate_claims_refused(verifier: FetchingVerifier, keys: Keys) -> None:
    raw = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    assert await reason_of(verifier, mint(keys.rsa, raw_payload=raw)) == "duplicate_member"
    raw_header = '{"alg":"RS256","kid":"rsa-1","kid":"rsa-2"}'
    assert await reason_of(verifier, mint(keys.rsa, raw_header=raw_header)) == "duplicate_member"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": NOW - 31}, "expired"),
        ({"exp": None}, "missing_exp"),
        ({"exp": str(int(NOW) + 300)}, "bad_claim_type"),
        ({"exp": True}, "bad_claim_type"),
        ({"nbf": False}, "bad_claim_type"),
        ({"iat": "0"}, "bad_claim_type"),
        ({"nbf": NOW + 60}, "not_yet_valid"),
        ({"iat": NOW + 60}, "iat_in_future"),
        ({"aud": "api://other"}, "wrong_audience"),
        ({"aud": 3}, "bad_claim_type"),
        ({"sub": ""}, "missing_sub"),
        ({"sub": None}, "missing_sub"),
    ],
)
async def test_claim_rules(
    verifier: FetchingVerifier, keys: Keys, overrides: dict[str, Any], expected: str
) -> None:
    assert await reason_of(verifier, mint(keys.rsa, claims(**overrides))) == expected


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ('"nbf": null', "bad_claim_type"),
        ('"iat": null', "bad_claim_type"),
        ('"exp": null', "bad_claim_type"),
        ('"sub": null', "bad_claim_type"),
        ('"sub": " "', "bad_sub"),
        ('"sub": "admin "', "bad_sub"),
        ('"sub": "\\tadmin"', "bad_sub"),
    ],
)
async def test_null_and_padded_claims_in_a_signed_token(
    verifier: FetchingVerifier, keys: Keys, member: str, expected: str
) -> None:
    # The raw JSON carries the member exactly as an IdP (or a forger) would send it.
    name = member.split('"')[1]
    raw = json.dumps(claims(**{name: None}))[:-1] + ", " + member + "}"
    assert await reason_of(verifier, mint(keys.rsa, raw_payload=raw)) == expected


async def test_too_old(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.rsa)), issuer(max_token_age_seconds=60))
    assert await reason_of(v, mint(keys.rsa, claims(iat=NOW - 100))) == "too_old"
    assert await reason_of(v, mint(keys.rsa, claims(iat=None))) == "missing_iat"


# -- size caps come before any crypto -------------------------------------------------------


async def test_oversized_tokens_refused_before_any_key_lookup_or_verify(
    clock: ManualClock, keys: Keys, source: CountingSource, verify_calls: list[str]
) -> None:
    v = make_verifier(clock, source, limits=TokenLimits(max_token_bytes=4096))
    big_claims = mint(keys.rsa, claims(pad="x" * 5000))
    big_header = mint(keys.rsa, claims(), header={"pad": "x" * 3000})
    huge_sig = mint(keys.rsa, claims()) + "A" * 2000
    for token in (big_claims, big_header, huge_sig, "x" * 10**6):
        assert await reason_of(v, token) == "oversized"
    assert source.lookups == 0
    assert verify_calls == []


async def test_malformed_tokens_never_reach_crypto(
    verifier: FetchingVerifier, source: CountingSource, verify_calls: list[str]
) -> None:
    for token in ("", "a.b.c", "a.b.c.d.e", '{"payload":""}', "e30.e30.AA"):
        await reason_of(verifier, token)
    assert source.lookups == 0
    assert verify_calls == []


# -- verified-token cache ---------------------------------------------------------------------


async def test_cache_hit_skips_crypto(
    verifier: FetchingVerifier, keys: Keys, verify_calls: list[str]
) -> None:
    token = mint(keys.rsa, claims())
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert verify_calls == ["rsa-1"]


async def test_cache_hit_rechecks_exp_with_the_clock(
    verifier: FetchingVerifier, clock: ManualClock, keys: Keys, verify_calls: list[str]
) -> None:
    token = mint(keys.rsa, claims(exp=NOW + 100))
    await verifier.verify(token)
    clock.advance(129.9)  # still inside exp + 30 s leeway
    await verifier.verify(token)
    assert verify_calls == ["rsa-1"]
    clock.advance(0.1)  # exactly exp + leeway
    assert await reason_of(verifier, token) == "expired"


async def test_cache_hit_rechecks_max_age(clock: ManualClock, keys: Keys) -> None:
    v = make_verifier(
        clock,
        StaticKeySource(ring_of(keys.rsa)),
        issuer(max_token_age_seconds=60, leeway_seconds=0),
    )
    token = mint(keys.rsa, claims(iat=NOW, exp=NOW + 3600))
    await v.verify(token)
    clock.advance(60)
    assert await reason_of(v, token) == "too_old"


async def test_cache_hit_rechecks_nbf_when_the_wall_clock_steps_back(
    verifier: FetchingVerifier, clock: ManualClock, keys: Keys
) -> None:
    token = mint(keys.rsa, claims(nbf=NOW, iat=None))
    await verifier.verify(token)
    clock.set_wall(NOW - 31)
    assert await reason_of(verifier, token) == "not_yet_valid"


async def test_cached_token_dies_with_its_key(
    verifier: FetchingVerifier, source: CountingSource, keys: Keys
) -> None:
    token = mint(keys.rsa, claims())
    await verifier.verify(token)
    source.ring = ring_of(keys.ec256)  # rsa-1 removed from the JWKS
    assert await reason_of(verifier, token) == "unknown_key"


async def test_cached_token_survives_a_refetch_of_the_same_key(
    verifier: FetchingVerifier, source: CountingSource, keys: Keys, verify_calls: list[str]
) -> None:
    token = mint(keys.rsa, claims())
    await verifier.verify(token)
    source.ring = ring_of(keys.rsa)  # a fresh KeyRing with the same key material and kid
    await verifier.verify(token)
    assert verify_calls == ["rsa-1"]


async def test_cache_is_bounded_and_evicts_the_oldest(
    clock: ManualClock, keys: Keys, verify_calls: list[str]
) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.rsa)), cache_size=3)
    tokens = [mint(keys.rsa, claims(jti=str(i))) for i in range(5)]
    for token in tokens:
        await v.verify(token)
    assert len(v.verifier._cache) == 3
    verify_calls.clear()
    for token in tokens[2:]:
        await v.verify(token)
    assert verify_calls == []  # the newest three are hits
    await v.verify(tokens[0])
    assert verify_calls == ["rsa-1"]  # the oldest was evicted


async def test_failed_tokens_are_not_cached(
    verifier: FetchingVerifier, keys: Keys, verify_calls: list[str]
) -> None:
    token = mint(keys.rsa, claims(aud="api://other"))
    for _ in range(2):
        assert await reason_of(verifier, token) == "wrong_audience"
    assert verify_calls == ["rsa-1", "rsa-1"]
    assert len(verifier.verifier._cache) == 0


async def test_cache_can_be_disabled(
    clock: ManualClock, keys: Keys, verify_calls: list[str]
) -> None:
    v = make_verifier(clock, StaticKeySource(ring_of(keys.rsa)), cache_size=0)
    token = mint(keys.rsa, claims())
    await v.verify(token)
    await v.verify(token)
    assert verify_calls == ["rsa-1", "rsa-1"]


async def test_cached_principal_cannot_be_mutated(verifier: FetchingVerifier, keys: Keys) -> None:
    token = mint(keys.rsa, claims(groups=["a"]))
    principal = await verifier.verify(token)
    with pytest.raises(TypeError):
        principal.claims["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(AttributeError):
        principal.claims["groups"].append("admin")
    assert (await verifier.verify(token)).claims["groups"] == ("a",)


# -- several issuers, lifecycle, reuse ---------------------------------------------------------


async def test_issuer_is_chosen_by_iss(clock: ManualClock, keys: Keys) -> None:
    other_iss = "https://other.example.test"
    other_key = ec_key("other")
    v = FetchingVerifier(
        [issuer(), issuer(issuer=other_iss, audiences=["api://other"])],
        clock=clock,
        key_sources={
            ISSUER: StaticKeySource(ring_of(keys.rsa)),
            other_iss: StaticKeySource(ring_of(other_key)),
        },
    )
    good = mint(other_key, claims(iss=other_iss, aud="api://other"))
    assert (await v.verify(good)).issuer == other_iss
    # A token claiming the first issuer but signed with the second issuer's key.
    crossed = mint(other_key, claims(aud=AUDIENCE))
    assert await reason_of(v, crossed) == "unknown_key"


def test_duplicate_issuers_refused(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="configured twice"):
        FetchingVerifier([issuer(), issuer()], clock=clock)


async def test_reusable_key_sources_for_a_reload(clock: ManualClock, keys: Keys) -> None:
    other_iss = "https://other.example.test"
    old = FetchingVerifier(
        [issuer(), issuer(issuer=other_iss, jwks_url="https://other.example.test/jwks")],
        clock=clock,
        key_sources={ISSUER: StaticKeySource(ring_of(keys.rsa))},
    )
    # Audiences changed (claims rules only) -> reuse; JWKS URL changed -> new source.
    new_settings = [
        issuer(audiences=["api://new"]),
        issuer(issuer=other_iss, jwks_url="https://other.example.test/jwks2"),
    ]
    reuse = old.reusable_key_sources(new_settings)
    assert reuse == {ISSUER: old.key_sources()[ISSUER]}
    new = FetchingVerifier(new_settings, clock=clock, key_sources=reuse)
    assert new.key_sources()[ISSUER] is old.key_sources()[ISSUER]
    assert new.key_sources()[other_iss] is not old.key_sources()[other_iss]
    assert (await new.verify(mint(keys.rsa, claims(aud="api://new")))).subject == "user-123"


# -- nothing but InvalidToken, for any input ----------------------------------------------------


@pytest.mark.parametrize("value", [None, b"a.b.c", 12, ["a.b.c"], {"t": 1}])
async def test_non_string_input(verifier: FetchingVerifier, value: Any) -> None:
    assert await reason_of(verifier, value) == "malformed"


async def test_fuzz_random_inputs_only_raise_invalid_token(
    verifier: FetchingVerifier, keys: Keys
) -> None:
    import random

    rng = random.Random(20240601)
    valid = mint(keys.rsa, claims())
    alphabet = "abcXYZ019-_.=+/{}\"' \u00e9\x00\ud800"
    inputs: list[str] = []
    for _ in range(400):
        inputs.append(bytes(rng.randrange(256) for _ in range(rng.randrange(64))).decode("latin-1"))
        inputs.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(80))))
        chars = list(valid)
        for _ in range(rng.randrange(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        inputs.append("".join(chars))
        parts = valid.split(".")
        rng.shuffle(parts)
        inputs.append(".".join(parts[: rng.randrange(1, 4)]))
    inputs += [_json_token(value) for value in _odd_json_values()]
    seen: set[str] = set()
    for text in inputs:
        try:
            await verifier.verify(text)
        except InvalidToken as exc:
            seen.add(exc.reason)
        # any other exception fails the test
    assert "internal_error" not in seen
    assert seen <= REASONS
    assert {"malformed", "bad_signature", "unknown_issuer"} <= seen


def _odd_json_values() -> list[Any]:
    return [
        [],
        "x",
        1,
        None,
        {"iss": ISSUER, "exp": 1e308, "sub": "a", "aud": AUDIENCE},
        {"iss": ISSUER, "exp": -1e308},
        {"iss": ISSUER, "exp": 10**300},
        {"iss": [ISSUER]},
        {"iss": {ISSUER: 1}},
    ]


def _json_token(payload: Any) -> str:
    head = encode_json({"alg": "RS256", "kid": "rsa-1"})
    body = b64url_encode(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url_encode(hmac.new(b'k', body.encode(), hashlib.sha256).digest())}"


# -- the synchronous pipeline: keys known now, or which to fetch ---------------------------
def test_the_core_verifier_reads_keys_through_a_plain_lookup(
    clock: ManualClock, keys: Keys
) -> None:
    """No key source, no event loop: a dict of key sets is all the core needs."""
    sets: dict[str, KeyRing | None] = {ISSUER: ring_of(keys.rsa)}
    core = TokenVerifier([issuer()], keys=sets.get, clock=clock)
    assert core.verify_fetched(mint(keys.rsa, claims())).key_id == "rsa-1"
    assert core.verify_now(mint(keys.rsa_b, claims())) == NeedKeys(ISSUER, "rsa-2", 0.15)
    sets[ISSUER] = ring_of(keys.rsa, keys.rsa_b)
    assert core.verify_fetched(mint(keys.rsa_b, claims())).key_id == "rsa-2"
    # A cached principal is dropped once its key leaves the set.
    sets[ISSUER] = ring_of(keys.rsa_b)
    with pytest.raises(InvalidToken) as gone:
        core.verify_fetched(mint(keys.rsa, claims()))
    assert gone.value.reason == "unknown_key"


def test_verify_now_needs_no_loop_when_the_keys_are_known(
    verifier: FetchingVerifier, keys: Keys
) -> None:
    principal = verifier.verifier.verify_now(mint(keys.rsa, claims()))
    assert isinstance(principal, Principal)
    assert principal.key_id == "rsa-1"


def test_an_unknown_kid_or_no_key_set_asks_for_keys_instead_of_waiting(
    clock: ManualClock, keys: Keys
) -> None:
    source = StaticKeySource(ring_of(keys.rsa))
    settings = issuer(jwks={"check_wait_seconds": 0.25})
    v = make_verifier(clock, source, settings)
    assert v.verifier.verify_now(mint(keys.rsa_b, claims())) == NeedKeys(ISSUER, "rsa-2", 0.25)
    assert source.unknown_kid_refreshes == 0  # asking is not fetching
    empty = make_verifier(clock, StaticKeySource(None), settings)
    assert empty.verifier.verify_now(mint(keys.rsa, claims())) == NeedKeys(ISSUER, "rsa-1", 0.25)


async def test_after_a_fetch_the_keys_there_are_decide(clock: ManualClock, keys: Keys) -> None:
    source = StaticKeySource(ring_of(keys.rsa))
    v = make_verifier(clock, source)
    token = mint(keys.rsa_b, claims())
    need = v.verifier.verify_now(token)
    assert isinstance(need, NeedKeys)
    await v.fetch_keys(need)
    assert source.unknown_kid_refreshes == 1
    with pytest.raises(InvalidToken) as still_unknown:
        v.verifier.verify_fetched(token)
    assert still_unknown.value.reason == "unknown_key"
    source.ring = ring_of(keys.rsa, keys.rsa_b)  # what a refetch would have brought
    assert v.verifier.verify_fetched(token).key_id == "rsa-2"
    with pytest.raises(InvalidToken) as none_at_all:
        make_verifier(clock, StaticKeySource(None)).verifier.verify_fetched(token)
    assert none_at_all.value.reason == "keys_unavailable"


async def test_a_failing_fetch_is_logged_not_raised(
    clock: ManualClock, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(StaticKeySource):
        async def refresh_for_unknown_kid(self, kid: str | None = None) -> KeyRing | None:
            raise RuntimeError("secret-looking detail")

    v = make_verifier(clock, Broken(ring_of(keys.rsa)))
    need = v.verifier.verify_now(mint(keys.rsa_b, claims()))
    assert isinstance(need, NeedKeys)
    await v.fetch_keys(need)
    assert "secret-looking detail" not in caplog.text
    assert "key fetch for a token failed unexpectedly" in caplog.text
