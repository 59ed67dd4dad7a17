from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.oidc_provider import Provider, ProviderMissingError, running_provider


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    """A real node-oidc-provider on a loopback port; skipped (with the reason) when node,
    npm or its npm dependencies are missing."""
    try:
        with running_provider() as running:
            yield running
    except ProviderMissingError as exc:
        pytest.skip(str(exc))
