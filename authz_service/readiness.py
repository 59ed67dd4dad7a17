"""gRPC health for the authz sidecar: SERVING only while the configured issuers have keys.

An authz sidecar whose issuer has no usable key set (the IdP was down at start, discovery
names another issuer, the JWKS holds no usable key) answers every token of that issuer
with 503. Reporting SERVING meanwhile would let Envoy and orchestrators route to it as if
it worked, so health says NOT_SERVING, and the log says which issuer and why:

    health.require_all_issuers: true    (default) every configured issuer must have keys
    health.require_all_issuers: false   at least one must (a multi-IdP deployment that
                                        prefers partial service to none)

With no issuers configured (public routes only) there is nothing to wait for. The state is
re-read every `health.check_interval_seconds` from the config serving now, so it follows
reloads and IdPs that come back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from authz_service.config_holder import ConfigHolder
from sidecar_runtime.loops import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether to report SERVING, and the issuers without keys with the reason for each."""

    serving: bool
    without_keys: Mapping[str, str] = field(default_factory=dict)
    # Other things Checks depend on that are not ready (e.g. the revocation list).
    not_ready: tuple[str, ...] = ()


def readiness(*, issuers: int, without_keys: Mapping[str, str], require_all: bool) -> Readiness:
    """Decide health from how many issuers there are and which of them lack keys."""
    enough = not without_keys if require_all else len(without_keys) < issuers
    return Readiness(issuers == 0 or enough, dict(without_keys))


def current_readiness(holder: ConfigHolder) -> Readiness:
    """The readiness of the config in force now."""
    compiled = holder.current
    return readiness(
        issuers=len(compiled.settings.issuers),
        without_keys=compiled.tokens.issuers_without_keys(),
        require_all=compiled.settings.health.require_all_issuers,
    )


class ReadinessMonitor:
    """Polls the serving config's key sources and sets gRPC health when the answer changes."""

    def __init__(
        self,
        holder: ConfigHolder,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        dependencies: Mapping[str, Callable[[], bool]] | None = None,
    ) -> None:
        self._holder = holder
        self._set_serving = set_serving
        # name -> ready(): each must be ready too (a revocation list never loaded refuses
        # every token, so routing Checks here would answer them all with 503).
        self._dependencies = dict(dependencies or {})
        self._reported: Readiness | None = None
        self._periodic = Periodic(
            self.update,
            interval=lambda: holder.current.settings.health.check_interval_seconds,
            what="health re-check",
        )

    async def update(self) -> Readiness:
        """Re-check now; set health and log when the state (or the reasons) changed."""
        state = current_readiness(self._holder)
        not_ready = tuple(name for name, ready in self._dependencies.items() if not ready())
        if not_ready:
            state = Readiness(False, state.without_keys, not_ready)
        previous, self._reported = self._reported, state
        if previous is None or state.serving != previous.serving:
            await self._set_serving(state.serving)
        if previous is None or state != previous:
            _log(state)
        return state

    def start(self) -> None:
        """Re-check every `health.check_interval_seconds` until stopped."""
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()


def _log(state: Readiness) -> None:
    fields = {
        "serving": state.serving,
        "issuers_without_keys": dict(state.without_keys),
        "not_ready": list(state.not_ready),
    }
    if state.not_ready:
        log.warning("health NOT_SERVING: not ready", extra={"fields": fields})
    elif state.serving and not state.without_keys:
        log.info("health SERVING: every issuer has a usable key set", extra={"fields": fields})
    elif state.serving:
        log.warning(
            "health SERVING, but some issuers have no usable key set (their tokens get 503)",
            extra={"fields": fields},
        )
    else:
        log.warning(
            "health NOT_SERVING: issuers without a usable key set", extra={"fields": fields}
        )
