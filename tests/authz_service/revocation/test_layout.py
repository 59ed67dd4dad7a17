"""Key names: bounded, readable when short and plain, distinct for distinct identifiers."""

from __future__ import annotations

from authz_service.revocation import layout

ISS = "https://idp.test"


def test_short_plain_identifiers_stay_readable() -> None:
    key = layout.jti_key("revoked:", ISS, "abc-123_X.y")
    assert key.startswith("revoked:jti:")
    assert key.endswith(":abc-123_X.y")
    assert layout.subject_key("revoked:", ISS, "alice").startswith("revoked:sub:")


def test_long_or_unusual_values_are_hashed_to_a_bounded_key() -> None:
    long_key = layout.jti_key("revoked:", "https://" + "i" * 5000, "j" * 5000)
    assert len(long_key) < 120
    assert ":~" in layout.subject_key("revoked:", ISS, "user@example.com")


def test_a_kept_value_never_collides_with_a_hashed_one() -> None:
    hashed = layout.identifier_part("a b")
    assert layout.identifier_part(hashed) != hashed  # "~..." is itself hashed again
    assert layout.identifier_part("x" * 64) == "x" * 64
    assert layout.identifier_part("x" * 65) != "x" * 65


def test_issuers_are_told_apart() -> None:
    assert layout.jti_key("p:", ISS, "j") != layout.jti_key("p:", ISS + "/", "j")
