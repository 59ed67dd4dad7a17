"""Errors of the rate-limit service.

    ConfigError (sidecar_runtime.errors)   bad rule or settings file; names file, key, reason
    RateLimitError                         base of the service's own errors
    ├── InvalidRequestError                a malformed ShouldRateLimit request (INVALID_ARGUMENT)
    └── StoreError                         the bucket store failed or is unreachable (UNAVAILABLE)
        └── StoreReplyError                Redis answered a command with an error (NOSCRIPT,
                                           WRONGPASS, NOAUTH, ...); the text is Redis's own

A denial is a result (`Decision`), never an exception. Store errors never reach Envoy:
the service answers them with the configured failure mode.
"""

from __future__ import annotations

import grpc


class RateLimitError(Exception):
    grpc_status = grpc.StatusCode.INTERNAL


class InvalidRequestError(RateLimitError):
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class StoreError(RateLimitError):
    grpc_status = grpc.StatusCode.UNAVAILABLE


class StoreReplyError(StoreError):
    """An error reply from Redis; the message is the server's, e.g. `NOSCRIPT ...`."""

    @property
    def code(self) -> str:
        """The error's first word (`NOSCRIPT`, `WRONGPASS`, `ERR`, ...)."""
        text = str(self)
        return text.split(" ", 1)[0] if text else ""
