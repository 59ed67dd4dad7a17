"""The dev API-key pepper: 32 random bytes, made at run time into the dev dir (0600),
never committed. Production reads its peppers from a secret store (docs/api-keys.md)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PEPPER_FILE = "secrets/apikey-pepper"


def ensure_pepper(dev_dir: Path) -> Path:
    """The dev pepper file under `dev_dir`, made if missing; an existing one is kept (the
    keys hashed with it stay valid across runs)."""
    path = dev_dir / PEPPER_FILE
    if path.is_file() and path.stat().st_size >= 32:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path
