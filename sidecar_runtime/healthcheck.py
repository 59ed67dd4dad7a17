"""`python -m sidecar_runtime.healthcheck ADDRESS [--service NAME] [--ca F --cert F --key F]`

Exits 0 when the sidecar's grpc.health.v1 answers SERVING, 1 otherwise: a container
HEALTHCHECK (compose) that needs no grpcurl in the image; Kubernetes uses its native gRPC
probes on `server.health_listen` instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    address: str,
    *,
    service: str = "",
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    server_name: str = "localhost",
    timeout: float = 2.0,
) -> bool:
    if ca is None:
        channel = grpc.insecure_channel(address)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )
        options = [("grpc.ssl_target_name_override", server_name)]
        channel = grpc.secure_channel(address, creds, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar_runtime.healthcheck")
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("--service", default="")
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--server-name", default="localhost")
    args = parser.parse_args(argv)
    ok = check(
        args.address,
        service=args.service,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        server_name=args.server_name,
    )
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
