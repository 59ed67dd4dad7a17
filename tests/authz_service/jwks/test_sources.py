from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from authz_service.jwks import FileKeySource
from authz_service.jwks.verification import FetchingVerifier
from authz_service.tokens import InvalidToken, JwksSettings
from sidecar_runtime.clock import ManualClock
from sidecar_runtime.errors import ConfigError
from tests.authz_service.tokens.conftest import Keys, issuer
from tests.authz_service.tokens.factory import claims, jwks, mint

SETTINGS = JwksSettings(file_check_seconds=2, unknown_kid_cooldown_seconds=30)


def write(path: Path, document: Any, *, bump: int = 0) -> None:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    # Make every rewrite visible even on filesystems with coarse mtimes.
    stamp = 1_700_000_000_000_000_000 + bump * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


async def reason_of(v: FetchingVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as err:
        await v.verify(token)
    return err.value.reason


async def test_file_source_reloads_when_the_file_changes(
    tmp_path: Path, clock: ManualClock, keys: Keys
) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks(keys.rsa))
    v = FetchingVerifier([issuer(jwks_file=path)], clock=clock)
    await v.start()
    assert (await v.verify(mint(keys.rsa, claims()))).key_id == "rsa-1"

    write(path, jwks(keys.ed), bump=1)  # rotation: rsa-1 out, ed-1 in
    clock.advance(2)  # the next look at the file is due
    assert (await v.verify(mint(keys.ed, claims()))).key_id == "ed-1"
    assert await reason_of(v, mint(keys.rsa, claims())) == "unknown_key"
    await v.close()


async def test_file_is_looked_at_only_every_few_seconds(
    tmp_path: Path, clock: ManualClock, keys: Keys
) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks(keys.rsa))
    source = FileKeySource(path, issuer="i", settings=SETTINGS, clock=clock)
    await source.start()
    first = source.current()
    write(path, jwks(keys.ed), bump=1)
    clock.advance(1.9)
    assert source.current() is first
    clock.advance(0.1)
    ring = source.current()
    assert ring is not None
    assert [k.kid for k in ring.keys] == ["ed-1"]


async def test_unknown_kid_rereads_the_file_within_the_cooldown(
    tmp_path: Path, clock: ManualClock, keys: Keys
) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks(keys.rsa))
    source = FileKeySource(path, issuer="i", settings=SETTINGS, clock=clock)
    await source.start()
    write(path, jwks(keys.rsa, keys.ed), bump=1)
    ring = await source.refresh_for_unknown_kid()  # no clock advance needed
    assert ring is not None
    assert ring.has_kid("ed-1")
    write(path, jwks(keys.ec256), bump=2)
    ring = await source.refresh_for_unknown_kid()  # inside the cooldown: not re-read
    assert ring is not None
    assert ring.has_kid("ed-1")


@pytest.mark.parametrize(
    "broken",
    ["{not json", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), json.dumps([]), ""],
)
async def test_broken_file_keeps_the_last_good_keys(
    tmp_path: Path, clock: ManualClock, keys: Keys, broken: str
) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks(keys.rsa))
    source = FileKeySource(path, issuer="i", settings=SETTINGS, clock=clock)
    await source.start()
    good = source.current()
    write(path, broken, bump=1)
    clock.advance(2)
    assert source.current() is good
    path.unlink()
    clock.advance(2)
    assert source.current() is good


async def test_oversized_file_refused(tmp_path: Path, clock: ManualClock, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks(keys.rsa))
    source = FileKeySource(path, issuer="i", settings=JwksSettings(max_bytes=100), clock=clock)
    with pytest.raises(ConfigError, match="over 100 bytes"):
        await source.start()


@pytest.mark.parametrize("content", [None, "[]", '{"keys": []}'])
async def test_unusable_file_at_start_is_a_config_error(
    tmp_path: Path, clock: ManualClock, content: str | None
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        write(path, content)
    v = FetchingVerifier([issuer(jwks_file=path)], clock=clock)
    with pytest.raises(ConfigError) as err:
        await v.start()
    assert err.value.file == str(path)
    assert err.value.key == "jwks_file"


async def test_relative_jwks_file_resolves_against_config_dir(
    tmp_path: Path, clock: ManualClock, keys: Keys
) -> None:
    (tmp_path / "keys").mkdir()
    write(tmp_path / "keys" / "jwks.json", jwks(keys.rsa))
    v = FetchingVerifier([issuer(jwks_file="keys/jwks.json")], clock=clock, config_dir=tmp_path)
    await v.start()
    assert (await v.verify(mint(keys.rsa, claims()))).subject == "user-123"
    await v.close()
