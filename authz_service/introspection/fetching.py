"""FetchingIntrospectionVerifier: the pure IntrospectionVerifier wired to the endpoint.

The I/O half, like authz_service.apikeys.fetching: it answers the core's
`NeedIntrospection` by asking the endpoint, and hands the answer to the core's `record`.

- Single flight: concurrent `fetch`es for one token share one HTTP call.
- At most `max_in_flight` distinct tokens are asked about at once; beyond that a fetch
  records nothing (so the decision is `unavailable`, 503) rather than queueing.
- A circuit breaker: after `breaker_failures` consecutive failures the endpoint is left
  alone for `breaker_open_seconds`, then one trial call decides.
- A failure records nothing: the caller's `verify_fetched` then refuses `unavailable`.

    verifier = FetchingIntrospectionVerifier.from_settings(settings, clock=clock)
    principal = await verifier.verify(token)   # or IntrospectionRefused
    await verifier.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from authz_service.introspection.breaker import EndpointBreaker
from authz_service.introspection.http_client import (
    Endpoint,
    EndpointError,
    HttpIntrospectionEndpoint,
)
from authz_service.introspection.settings import IntrospectionIssuerSettings
from authz_service.introspection.verifier import (
    IntrospectionStats,
    IntrospectionVerifier,
    NeedIntrospection,
)
from authz_service.principal import Principal
from authz_service.tokens.settings import tls_context
from sidecar_runtime.clock import Clock

log = logging.getLogger(__name__)


class FetchingIntrospectionVerifier:
    """Verifies opaque tokens of one issuer, asking its endpoint when the cache is empty."""

    def __init__(
        self,
        *,
        verifier: IntrospectionVerifier,
        endpoint: Endpoint,
        breaker: EndpointBreaker,
        max_in_flight: int = 64,
    ) -> None:
        self.verifier = verifier
        self.endpoint = endpoint
        self.breaker = breaker
        self._max_in_flight = max_in_flight
        self._flights: dict[str, asyncio.Task[None]] = {}
        self.overloaded = 0  # fetches refused because max_in_flight were out

    @classmethod
    def from_settings(
        cls,
        settings: IntrospectionIssuerSettings,
        *,
        clock: Clock,
        stats: IntrospectionStats | None = None,
        endpoint: Endpoint | None = None,
    ) -> FetchingIntrospectionVerifier:
        """Reads the client secret now (ValueError naming its source if unusable)."""
        if endpoint is None:
            endpoint = HttpIntrospectionEndpoint(
                url=settings.introspection_endpoint,
                client_id=settings.client_id,
                client_secret=settings.read_client_secret(),
                timeout_seconds=settings.timeout_seconds,
                max_bytes=settings.max_response_bytes,
                tls=tls_context(settings.ca_file),
            )
        breaker = EndpointBreaker(
            failures=settings.breaker_failures,
            open_seconds=settings.breaker_open_seconds,
            clock=clock,
        )
        return cls(
            verifier=IntrospectionVerifier.from_settings(settings, clock=clock, stats=stats),
            endpoint=endpoint,
            breaker=breaker,
            max_in_flight=settings.max_in_flight,
        )

    async def verify(self, token: str) -> Principal:
        """verify_now, and when it needs it, fetch then verify_fetched."""
        found = self.verifier.verify_now(token)
        if isinstance(found, NeedIntrospection):
            await self.fetch(found)
            return self.verifier.verify_fetched(token)
        return found

    async def fetch(self, need: NeedIntrospection) -> None:
        """Ask the endpoint about `need`'s token (joining a call already out for it) and
        record the answer in the cache. Never raises for the endpoint's failures."""
        flight = self._flights.get(need.digest)
        if flight is None:
            if len(self._flights) >= self._max_in_flight:
                self.overloaded += 1
                return
            flight = asyncio.create_task(self._ask(need))
            self._flights[need.digest] = flight
            flight.add_done_callback(lambda _: self._flights.pop(need.digest, None))
        # shield: a caller giving up (its own deadline) does not cancel the others' call
        await asyncio.shield(flight)

    async def close(self) -> None:
        """Cancel the calls still out."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        for flight in flights:
            with contextlib.suppress(asyncio.CancelledError):
                await flight

    async def _ask(self, need: NeedIntrospection) -> None:
        if not self.breaker.allow():
            return
        try:
            body = await self.endpoint.introspect(need.token)
        except EndpointError as exc:
            self.breaker.record_failure()
            log.warning(
                "introspection endpoint of %s failed (token sha256 %s...): %s",
                self.verifier.issuer,
                need.digest[:12],
                exc,
            )
            return
        reason = self.verifier.record(need, body)
        if reason == "unavailable":  # a 200 whose body is no introspection answer
            self.breaker.record_failure()
            log.warning("introspection endpoint of %s sent garbage", self.verifier.issuer)
            return
        self.breaker.record_success()
