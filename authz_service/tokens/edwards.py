"""Just enough edwards25519 arithmetic to refuse small-order Ed25519 public keys.

A public key in the 8-element torsion subgroup makes signatures that verify for many
messages under lax verifiers (the "small-order key" class of EdDSA attacks; RFC 8032 §5.1.7
verification accepts them). A JWKS has no business publishing one, so such keys are dropped
at load. Speed is irrelevant here (it runs once per key per JWKS load), so the arithmetic is
plain affine coordinates with modular inverses, written for readability.
"""

from __future__ import annotations

P = 2**255 - 19  # RFC 8032 §5.1: the field prime
D = (-121665 * pow(121666, P - 2, P)) % P  # RFC 8032 §5.1: d = -121665/121666
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod p
COFACTOR_DOUBLINGS = 3  # the cofactor is 8 = 2**3

Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def decompress(encoded: bytes) -> Point:
    """Decode a 32-byte point per RFC 8032 §5.1.3; raise ValueError if it is not on the curve."""
    if len(encoded) != 32:
        raise ValueError("an Ed25519 point is 32 bytes")
    as_int = int.from_bytes(encoded, "little")
    x_sign = as_int >> 255
    y = as_int & ((1 << 255) - 1)
    if y >= P:
        raise ValueError("non-canonical y coordinate")
    x = _recover_x(y, x_sign)
    return x, y


def _recover_x(y: int, x_sign: int) -> int:
    # Solve x^2 = (y^2 - 1) / (d y^2 + 1), RFC 8032 §5.1.3 step 2-4.
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    vx2 = (v * x * x) % P
    if vx2 == (-u) % P:
        x = (x * SQRT_M1) % P
    elif vx2 != u:
        raise ValueError("not a point on edwards25519")
    if x == 0 and x_sign == 1:
        raise ValueError("non-canonical x sign")
    if x & 1 != x_sign:
        x = P - x
    return x


def add(p1: Point, p2: Point) -> Point:
    """Twisted Edwards addition with a = -1 (complete on edwards25519: d is a non-square)."""
    x1, y1 = p1
    x2, y2 = p2
    t = (D * x1 * x2 * y1 * y2) % P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, P - 2, P)
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P)
    return x3 % P, y3 % P


def is_small_order(encoded: bytes) -> bool:
    """True when the point has order dividing 8, i.e. 8·P is the identity.

    Raises ValueError if `encoded` is not a valid point encoding at all.
    """
    point = decompress(encoded)
    for _ in range(COFACTOR_DOUBLINGS):
        point = add(point, point)
    return point == IDENTITY
