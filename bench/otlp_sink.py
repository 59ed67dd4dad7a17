"""A do-nothing OTLP/gRPC collector: accepts trace and metric exports and counts them.

The "telemetry on" rows point the sidecars' standard OTEL_EXPORTER_OTLP_ENDPOINT here, so
the measured cost is the sidecar's (span creation, batching, export on its own threads),
not a real collector's. It runs as its own process: `python -m bench.otlp_sink --listen
HOST:PORT`; the counts go to stdout every second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

COUNTS = {"spans": 0, "metric_exports": 0}


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        COUNTS["spans"] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        COUNTS["metric_exports"] += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def _serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():
        print(f"spans={COUNTS['spans']} metric_exports={COUNTS['metric_exports']}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--listen", required=True)
    asyncio.run(_serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
