"""The decision pipeline is synchronous: a token whose keys are unknown makes it say which
keys to fetch, never wait; after the fetch it decides with the keys there are."""

from __future__ import annotations

from pathlib import Path

from authz_service.compiled_config import load_compiled_config
from authz_service.pipeline import Authorizer, Decision, NeedKeys
from authz_service.policy import RequestFacts
from authz_service.tokens import load_key_ring
from authz_service.tokens.verifier import TokenVerifier
from devstack.idp_keys import IdpKeys
from sidecar_runtime.clock import SystemClock
from tests.authz_service.conftest import ISSUER, Mint, write_config


def _facts(path: str) -> RequestFacts:
    return RequestFacts(
        method="GET",
        raw_path=path,
        host="api.test",
        headers={},
        client_address="192.0.2.1",
        peer_principal="",
        request_id="r-1",
    )


async def test_decide_now_says_which_keys_to_fetch_then_decide_fetched_decides(
    config_dir: Path, idp: IdpKeys, mint: Mint
) -> None:
    compiled = await load_compiled_config(write_config(config_dir), clock=SystemClock())
    try:
        # The issuer's current key set: only the RS256 key (an Ed25519 one rotated in later).
        rs256_only = [key for key in idp.public_jwks()["keys"] if key["alg"] == "RS256"]
        ring = load_key_ring({"keys": rs256_only}, origin=ISSUER)
        verifier = TokenVerifier(
            compiled.settings.issuers, keys={ISSUER: ring}.get, clock=SystemClock()
        )
        authorizer = Authorizer(compiled.authorizer.rule_sets, verifier, cookie_names=frozenset())
        facts = _facts("/api/v1/users/alice")
        known = f"Bearer {mint('alice', scope='users:read')}"
        decided = authorizer.decide_now(facts, authorization=(known,), cookie="")
        assert isinstance(decided, Decision)
        assert decided.allowed

        unknown = f"Bearer {mint('alice', alg='EdDSA', scope='users:read')}"
        need = authorizer.decide_now(facts, authorization=(unknown,), cookie="")
        assert isinstance(need, NeedKeys)
        assert (need.issuer, need.kid) == (ISSUER, idp.ed25519.thumbprint())
        after = authorizer.decide_fetched(facts, authorization=(unknown,), cookie="")
        assert (after.allowed, after.status, after.reason) == (False, 401, "unknown_key")
        # Public routes and requests refused before the token never need keys.
        public = authorizer.decide_now(_facts("/api/v1/public/ping"), authorization=(), cookie="")
        assert isinstance(public, Decision)
        assert public.allowed
    finally:
        await compiled.close()
