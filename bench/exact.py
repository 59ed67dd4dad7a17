"""Global limits still exact: two rate-limit replicas behind Envoy, one key.

The local stack in the default profile on the sidecars' default stack, with a second
rate-limit replica in Envoy's rate-limit cluster (Envoy balances the calls over both; one
Redis). The per-subject rule is changed to a burst of `exact_burst` refilled at one token
an hour, and one fresh subject sends 3 x `exact_burst` requests through Envoy with 20 in
flight. Exact means: exactly `exact_burst` answered 200 and every other one 429, both
replicas decided some of them, and nothing was decided without Redis (no sidecar error or
timeout counted by Envoy, no store failure logged by either replica).
"""

from __future__ import annotations

import time
import urllib.request
import uuid
import warnings
from typing import Any

from bench import edge, edge_configs
from bench.context import Ctx, describe, stage
from bench.load import Client, Shape, run
from bench.messages import AUDIENCE
from bench.sidecars import store_failures
from devstack import envoy_config
from devstack.idp_keys import mint_token


def calls_per_host(admin_port: int, cluster: str) -> dict[str, int]:
    """`rq_total` of each host of `cluster`, from Envoy's /clusters."""
    url = f"http://127.0.0.1:{admin_port}/clusters"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return hosts_from(resp.read().decode(), cluster)


def hosts_from(text: str, cluster: str) -> dict[str, int]:
    """`rq_total` per host of `cluster` in /clusters' text (`name::host::stat::value`)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total":
            out[parts[1]] = int(parts[3])
    return out


def until_every_replica_is_used(running: edge.Edge, *, timeout: float = 15.0) -> bool:
    """Requests of another subject until Envoy has sent each replica a call: Envoy's
    balancer takes a host up some time after its first health check passed (and after
    /healthz said healthy), and one replica alone would prove nothing."""
    owner, token = running.tokens[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        edge.https_status(running, f"/api/v1/users/{owner}", token)
        hosts = calls_per_host(running.admin_port, envoy_config.RATELIMIT_CLUSTER)
        if _every_replica_called(hosts):
            return True
        time.sleep(0.1)
    return False


def verdict(
    *, burst: int, sent: int, statuses: dict[str, int], hosts: dict[str, int], unbacked: int
) -> bool:
    """Exactly `burst` admitted, the rest limited, every replica used, nothing unbacked."""
    return (
        statuses.get("200", 0) == burst
        and statuses.get("429", 0) == sent - burst
        and _every_replica_called(hosts)
        and unbacked == 0
    )


def _every_replica_called(hosts: dict[str, int]) -> bool:
    return len(hosts) >= 2 and all(n > 0 for n in hosts.values())


def measure(ctx: Ctx) -> dict[str, Any]:
    t = ctx.timing
    _, default_stack = edge.sidecar_stacks()
    spec = edge.Spec("exact", "edgeguard", "local", default_stack)
    rules = edge_configs.one_key_rules(t.exact_burst)
    running = edge.start_stack(ctx, spec, rules=rules, replica=True)
    try:
        edge.verify(running)
        if not until_every_replica_is_used(running):
            ctx.notes.append("exactness check: Envoy never sent a call to one of the replicas")
        assert running.stack is not None
        assert running.stack.idp_keys is not None
        subject = f"one-key-{uuid.uuid4().hex[:12]}"  # no bucket of an earlier load
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            token = mint_token(
                running.stack.idp_keys, issuer=running.stack.issuer, audience=AUDIENCE,
                subject=subject, scope="users:read", ttl=3600,
            )  # fmt: skip
        client = Client(
            f"{running.url_base}/api/v1/users/{subject}", None, (f"authorization: Bearer {token}",)
        )
        cluster = envoy_config.RATELIMIT_CLUSTER
        before = calls_per_host(running.admin_port, cluster)
        counters = edge.counters(running)
        sent = 3 * t.exact_burst
        result = run(
            ctx.procs,
            [client] * t.clients,
            Shape(t.conns, t.edge_streams, requests=sent),
            work_dir=ctx.dir("runs", "exact"),
        )
        after = calls_per_host(running.admin_port, cluster)
        trouble = edge.sidecar_trouble(edge.delta(counters, edge.counters(running)))
        logs = running.stack.log_dir
        failures = sum(store_failures(logs / f"{n}.log") for n in ("ratelimit", "ratelimit-2"))
    finally:
        running.stop()
    hosts = {host: n - before.get(host, 0) for host, n in after.items()}
    unbacked = sum(trouble.values()) + failures + result.failed
    return {
        "profile": spec.profile,
        "stack": default_stack,
        "burst": t.exact_burst,
        "sent": result.requests,
        "statuses": result.statuses,
        "calls_per_replica": hosts,
        "sidecar_trouble": trouble,
        "store_failures": failures,
        "exact": verdict(
            burst=t.exact_burst,
            sent=result.requests,
            statuses=result.statuses,
            hosts=hosts,
            unbacked=unbacked,
        ),
        "command": result.commands[0] if result.commands else "",
    }


def run_section(ctx: Ctx) -> dict[str, Any]:
    if ctx.out_of_time(40):
        return {}
    with stage(ctx, "exactness: 2 rate-limit replicas, one key"):
        try:
            return measure(ctx)
        except Exception as exc:
            ctx.notes.append(f"exactness check: failed ({describe(exc)})")
            return {}
