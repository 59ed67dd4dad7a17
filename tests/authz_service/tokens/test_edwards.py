from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authz_service.tokens.edwards import IDENTITY, P, add, decompress, is_small_order

# Group order of the prime-order subgroup (RFC 8032 §5.1: L).
L = 2**252 + 27742317777372353535851937790883648493


def multiply(point: tuple[int, int], scalar: int) -> tuple[int, int]:
    result, addend = IDENTITY, point
    while scalar:
        if scalar & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        scalar >>= 1
    return result


def compress(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def random_point() -> tuple[int, int]:
    while True:
        try:
            return decompress(secrets.token_bytes(32))
        except ValueError:
            continue


# Published small-order encodings (identity, order 2, order 4, order 8).
KNOWN_SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
]


@pytest.mark.parametrize("hex_point", KNOWN_SMALL_ORDER)
def test_known_small_order_points(hex_point: str) -> None:
    assert is_small_order(bytes.fromhex(hex_point))


def test_torsion_points_made_by_multiplying_by_the_group_order() -> None:
    # L·P kills the prime-order part of any point and leaves its torsion component.
    for _ in range(4):
        torsion = multiply(random_point(), L)
        assert is_small_order(compress(torsion))


def test_real_public_keys_are_not_small_order() -> None:
    for _ in range(20):
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert not is_small_order(raw)


def test_mixed_order_point_is_not_small_order() -> None:
    # A real key plus a torsion point has large order: not refused by this check.
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    mixed = add(decompress(key), decompress(bytes.fromhex(KNOWN_SMALL_ORDER[4])))
    assert not is_small_order(compress(mixed))


def test_base_point_decompresses_to_the_rfc_value() -> None:
    y = 4 * pow(5, P - 2, P) % P
    x, _ = decompress(y.to_bytes(32, "little"))
    assert x == 15112221349535400772501151409588531511454012693041857206046113283949847762202


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x01" * 31,  # short
        (P).to_bytes(32, "little"),  # y = p, non-canonical
        (P + 1).to_bytes(32, "little"),  # non-canonical encoding of the identity
        bytes.fromhex(
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
        ),  # -1 w/ x=0, sign 1
        (2).to_bytes(32, "little"),  # y = 2 is not on the curve
    ],
)
def test_invalid_encodings_raise(encoded: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - messages vary by defect
        is_small_order(encoded)
