"""Fixtures every suite may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.pki import Pki, ensure_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with server and client certificates (made at test time)."""
    return ensure_pki(Path(tmp_path_factory.mktemp("pki")))
