"""gRPC server credentials from `TlsSettings`."""

from __future__ import annotations

import grpc

from sidecar_runtime.settings import TlsSettings


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """None means plaintext; `mtls` requires and verifies a client certificate."""
    if tls.mode == "plaintext":
        return None
    assert tls.cert_file is not None
    assert tls.key_file is not None
    chain = tls.cert_file.read_bytes()
    key = tls.key_file.read_bytes()
    if tls.mode == "tls":
        return grpc.ssl_server_credentials([(key, chain)])
    assert tls.ca_file is not None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=tls.ca_file.read_bytes(),
        require_client_auth=True,
    )
