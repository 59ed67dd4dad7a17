"""Bucket keys: no crafted value collides with another, none grows large."""

from __future__ import annotations

from ratelimit_service.limits.bucket_keys import MAX_RAW_CHARS, bucket_key


def test_crafted_values_do_not_collide() -> None:
    crafted = [
        [("a", "b:c")],
        [("a:b", "c")],
        [("a", "b"), ("c", "")],
        [("a", "b"), ("", "c")],
        [("a", "bc")],
        [("ab", "c")],
        [("1:a", "1:b")],
        [("a", "1:b1:c")],
        [("a", "b1:c")],
        [("a", "#" + "0" * 64)],
    ]
    keys = {bucket_key("rl:", "d", entries, "1second") for entries in crafted}
    assert len(keys) == len(crafted)
    domains = {bucket_key("rl:", domain, [("k", "v")], "1second") for domain in ["d", "d1:k", "d1"]}
    assert len(domains) == 3
    tags = {bucket_key("rl:", "d", [("k", "v")], tag) for tag in ["1second", "1day", "1second#1"]}
    assert len(tags) == 3


def test_long_values_are_hashed_to_a_bounded_key() -> None:
    short = bucket_key("rl:", "d", [("k", "v")], "1second")
    long_a = bucket_key("rl:", "d", [("k", "x" * 100_000)], "1second")
    long_b = bucket_key("rl:", "d", [("k", "x" * 99_999 + "y")], "1second")
    assert short.startswith("rl:")
    assert len(long_a) < 100
    assert len(long_b) < 100
    assert long_a != long_b
    assert long_a.startswith("rl:#")
    boundary = "v" * (MAX_RAW_CHARS - 30)
    assert "#" not in bucket_key("rl:", "d", [("k", boundary)], "1second")


def test_cluster_keys_carry_a_hash_tag_no_value_can_choose() -> None:
    key = bucket_key("rl:", "d", [("k", "{pick-my-slot}")], "1second", hash_tag=True)
    tag = key[key.index("{") + 1 : key.index("}")]
    assert len(tag) == 16
    assert all(c in "0123456789abcdef" for c in tag)
    tags = {
        bucket_key("rl:", "d", [("k", str(i))], "1second", hash_tag=True)[3:20] for i in range(50)
    }
    assert len(tags) == 50  # spread, not pinned to one slot


def test_unicode_values_are_distinct() -> None:
    values = ["é", "e\u0301", "ﬁ", "fi", "\u0000", ""]
    keys = {bucket_key("rl:", "d", [("k", v)], "t") for v in values}
    assert len(keys) == len(values)
