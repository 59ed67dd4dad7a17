from __future__ import annotations

import pytest

from authz_service.tokens.algorithms import ALGORITHMS, allow_list


@pytest.mark.parametrize(
    ("configured", "accepted"),
    [
        (["EdDSA"], {"EdDSA", "Ed25519"}),
        (["Ed25519"], {"EdDSA", "Ed25519"}),
        (["RS256", "EdDSA"], {"RS256", "EdDSA", "Ed25519"}),
        (["RS256"], {"RS256"}),
        (["PS256", "ES256"], {"PS256", "ES256"}),
        ([], set()),
    ],
)
def test_allow_list_adds_only_the_other_name_of_the_same_algorithm(
    configured: list[str], accepted: set[str]
) -> None:
    assert allow_list(configured) == accepted


def test_every_algorithm_is_bound_to_one_key_type() -> None:
    for name, spec in ALGORITHMS.items():
        assert spec.name == name
        assert spec.kty in {"RSA", "EC", "OKP"}
        assert (spec.crv is None) == (spec.kty == "RSA")
    assert "none" not in ALGORITHMS
    assert not any(name.startswith("HS") for name in ALGORITHMS)
