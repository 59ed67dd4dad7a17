"""Channels to test servers: plaintext or mTLS with the test PKI."""

from __future__ import annotations

import grpc

from devstack.pki import Pki


def channel(address: str, pki: Pki | None = None, *, client_cert: bool = True) -> grpc.aio.Channel:
    if pki is None:
        return grpc.aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )
