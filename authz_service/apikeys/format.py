"""The API key's text: `<prefix>_<key id>_<secret><checksum>`, made and parsed strictly.

    eg_live_k7q2m4x9c3v5b6n8_4Zt...(43 chars)...Qm9xY2
    ^^^^^^^ ^^^^^^^^^^^^^^^^ ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ ^^^^^^
    prefix  key id           secret                                       checksum

- prefix: product and environment (`eg_live`, `eg_test`), configured; each part a
  lowercase letter then up to 15 lowercase letters or digits. Secret scanners match it.
- key id: 16 characters of lowercase RFC 4648 base32 (`a-z`, `2-7`), 80 random bits. It is
  public: it names the Redis record and appears in `list`, audit lines and metadata.
- secret: 43 base62 characters (`0-9A-Za-z`), 43 * log2(62) = 256.03 random bits.
- checksum: CRC-32 of everything before it, as 6 base62 characters (GitHub's token format
  does the same), so typos and truncations are refused as `malformed` by scanners and by
  the sidecar without a Redis lookup. It is not a secret and proves nothing.

Parsing checks the exact length and charset of every part before anything is looked up.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
KEY_ID_CHARS = 16
SECRET_CHARS = 43
CHECKSUM_CHARS = 6  # 62**6 > 2**32: every CRC-32 fits
PREFIX_PATTERN = r"[a-z][a-z0-9]{0,15}_[a-z][a-z0-9]{0,15}"

_PREFIX = re.compile(rf"^{PREFIX_PATTERN}$")
_BODY = re.compile(
    rf"_(?P<key_id>[a-z2-7]{{{KEY_ID_CHARS}}})"
    rf"_(?P<secret>[0-9A-Za-z]{{{SECRET_CHARS}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_CHARS}}})$"
)
MAX_KEY_CHARS = 33 + 2 + KEY_ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS  # longest prefix


class MalformedKey(ValueError):  # noqa: N818 - like InvalidApiKey, a verdict
    """The text is not an API key of this deployment; `reason` is for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key, split. `repr` leaves the secret out."""

    prefix: str
    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(prefix={self.prefix!r}, key_id={self.key_id!r}, secret=<hidden>)"


def check_prefix(prefix: str) -> str:
    """The prefix if it is `product_environment` in the allowed charset; else ValueError."""
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"{prefix!r} is not product_environment (lowercase letters and digits, "
            "each part starting with a letter, at most 16 characters)"
        )
    return prefix


def new_key_id() -> str:
    """A fresh public key id (80 random bits)."""
    return "".join(secrets.choice(BASE32) for _ in range(KEY_ID_CHARS))


def new_secret() -> str:
    """A fresh secret (256 random bits, base62)."""
    return "".join(secrets.choice(BASE62) for _ in range(SECRET_CHARS))


def checksum(text: str) -> str:
    """CRC-32 of `text` as 6 base62 characters, most significant first."""
    value = zlib.crc32(text.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_CHARS):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def format_key(prefix: str, key_id: str, secret: str) -> str:
    """The full key text for its parts (the parts are trusted: made by this module)."""
    body = f"{prefix}_{key_id}_{secret}"
    return body + checksum(body)


def parse_key(text: str, *, prefix: str) -> ParsedKey:
    """Split a presented key; MalformedKey unless it is exactly this deployment's format.
    `wrong_prefix` is a well-formed key of another product or environment."""
    if len(text) > MAX_KEY_CHARS or not text.isascii():
        raise MalformedKey("malformed")
    found = _BODY.match(text, len(prefix)) if text.startswith(prefix) else None
    if found is None:
        raise MalformedKey("wrong_prefix" if _other_prefix(text) else "malformed")
    if not secrets.compare_digest(checksum(text[:-CHECKSUM_CHARS]), found["checksum"]):
        raise MalformedKey("malformed")
    return ParsedKey(prefix=prefix, key_id=found["key_id"], secret=found["secret"])


def _other_prefix(text: str) -> bool:
    """Whether `text` is a well-formed key under some other prefix."""
    tail = 2 + KEY_ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS
    if len(text) <= tail or not _PREFIX.match(text[:-tail]):
        return False
    found = _BODY.match(text, len(text) - tail)
    return found is not None and checksum(text[:-CHECKSUM_CHARS]) == found["checksum"]
