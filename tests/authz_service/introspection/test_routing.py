from __future__ import annotations

import base64
import json

import pytest

from authz_service.introspection import looks_like_jws


def _segment(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_compact_jws_goes_to_the_jwt_verifier() -> None:
    token = f"{_segment({'alg': 'RS256', 'kid': 'k'})}.{_segment({'sub': 'a'})}.c2ln"
    assert looks_like_jws(token)


def test_alg_none_still_has_the_jws_shape() -> None:
    # The JWT verifier refuses it; it must not fall through to introspection.
    assert looks_like_jws(f"{_segment({'alg': 'none'})}.{_segment({})}.")


@pytest.mark.parametrize(
    "token",
    [
        "kjNt0ZENexJVnqzSYuMYJCGQOsdU0gqkEsSNwuHR7gZ",  # node-oidc-provider's opaque token
        "a.b.c",  # three parts, but the header is no JSON
        f"{_segment({'typ': 'JWT'})}.e30.sig",  # no alg
        f"{_segment({'alg': 5})}.e30.sig",  # alg not a string
        f"{_segment(['alg'])}.e30.sig",  # header not an object
        f"{_segment({'alg': 'RS256'})}.e30",  # two parts
        f"{_segment({'alg': 'RSA-OAEP'})}.a.b.c.d",  # five parts (JWE)
        f"{_segment({'alg': 'RS256'})}.e30.s*g",  # not base64url
        "." * 2,
        "",
        "x" * 10_000 + ".e30.sig",
    ],
)
def test_everything_else_is_not_a_jws(token: str) -> None:
    assert not looks_like_jws(token)
