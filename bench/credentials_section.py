"""The credentials section: what an API key costs next to a JWT, through the edge (issue 19).

One local stack (default profile, the sidecars' default stack) whose policy is the demo's
plus one rule that takes either credential:

    bench-credentials  GET /bench/credentials/{id}  credentials: [jwt, api_key]

with `scopes: [users:read]` and the ownership condition `params.id == token.sub`. Its
`api_keys:` section is the demo's with a ceiling that allows the minted key's scope and
role; the stack points it at the bench's Redis and at a pepper it writes into its own
directory under the work directory (32 random bytes, 0600, `devstack.peppers`).

Before any load, one key is minted for the first token's subject with the CLI, as an
operator would (`authz-service apikey create` against the config the sidecar runs; the
key is the first line of its output), and both credentials are checked: own id 200,
someone else's 403, no credential 401, the key on the demo's JWT-only rule 401.

Every h2load process then sends the same credential on every request, so each answer is
a cache hit: the JWT from the verified-token cache, the key's record from the API-key
cache (the HMAC of its secret is still computed per request). `credential_rounds`
alternating rounds of `edge_saturation_s` per credential, with the edge section's
connections and streams. Per credential: the median rate, and CPU per request by process
from the round with the median server CPU; the key's difference from the JWT: the
medians of the per-round differences (µs) and ratios (rate).

A third credential, where node and the provider's npm packages are here: an opaque token
of a real OpenID provider (node-oidc-provider, `tests/support/oidc_provider`) on a rule of
its own, `bench-opaque` (GET /bench/opaque/{id}, its scope, the same ownership
condition), introspected once (RFC 7662) and then answered from the introspection cache.
Where the provider cannot run, the notes say why and its row is left out.

No secret reaches the results: h2load's command line is stored with `$API_KEY` (or
`$TOKEN`, `$OPAQUE_TOKEN`) in its place.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import edge, edge_budget, rounds
from bench.body_section import LOAD_OVERHEAD_S, RESERVE_S, START_S
from bench.context import Ctx, describe, stage
from bench.load import Client, Shape
from bench.procs import REPO
from devstack import configs
from tests.support.oidc_provider import (
    APP,
    RESOURCE,
    SIDECAR,
    Provider,
    ProviderMissingError,
    running_provider,
)

JWT, API_KEY, OPAQUE = "jwt", "api_key", "introspected"
SCHEMES = {JWT: "Bearer", API_KEY: "ApiKey", OPAQUE: "Bearer"}
# What stands for each in stored commands.
MARKS = {JWT: "$TOKEN", API_KEY: "$API_KEY", OPAQUE: "$OPAQUE_TOKEN"}
RULE = "bench-credentials"
OPAQUE_RULE, OPAQUE_SCOPE = "bench-opaque", "orders:read"
SCOPE, ROLE = "users:read", "service"
MINT_S = 10.0  # the CLI's start and one Redis write, a generous bound


def path(subject: str, name: str = JWT) -> str:
    return f"/bench/opaque/{subject}" if name == OPAQUE else f"/bench/credentials/{subject}"


def write_policy(target: Path, provider: Provider | None = None) -> Path:
    """The demo authz config with the bench rule added and an API-key ceiling that allows
    exactly the scope and role the bench mints; with `provider`, its introspection
    endpoint and the opaque tokens' rule too."""
    data = yaml.safe_load(configs.AUTHZ_DEMO.read_text())
    if provider is not None:
        secret = target.parent / "introspection-secret"
        secret.write_text(SIDECAR[1])
        secret.chmod(0o600)
        data["introspection"] = {
            "issuer": provider.issuer,
            "introspection_endpoint": provider.introspection_endpoint,
            "client_id": SIDECAR[0],
            "client_secret_file": str(secret),
            "audiences": [RESOURCE],
            "client_id_as_subject": True,
        }
        data["routes"].append(
            {
                "name": OPAQUE_RULE,
                "methods": ["GET"],
                "path": path("{id}", OPAQUE),
                "scopes": [OPAQUE_SCOPE],
                "conditions": ["params.id == token.sub"],
            }
        )
    data["routes"].append(
        {
            "name": RULE,
            "methods": ["GET"],
            "path": path("{id}"),
            "credentials": [JWT, API_KEY],
            "scopes": [SCOPE],
            "conditions": ["params.id == token.sub"],
        }
    )
    data.setdefault("api_keys", {})["ceiling"] = {"max_scopes": [SCOPE], "max_roles": [ROLE]}
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def mint_key(config: Path, subject: str) -> str:
    """One API key from the CLI; only its error output is ever shown."""
    argv = [
        sys.executable, "-m", "authz_service", "apikey", "create", "--config", str(config),
        "--subject", subject, "--scopes", SCOPE, "--roles", ROLE,
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"apikey create exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return lines[0].strip()


def verify(running: edge.Edge, secrets: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Each credential answers as it should on its rule before any load (own id 200,
    someone else's 403), none at all is 401, and the key is refused where a rule takes
    only JWTs. `secrets`: credential -> (secret, its subject)."""
    subject = running.tokens[0][0]
    seen = {"none": edge.https_status(running, path(subject), None)}
    want = {"none": 401, f"{API_KEY} jwt_only_rule": 401}
    for name, (secret, owner) in secrets.items():
        for who, target in (("owner", owner), ("other_user", f"not-{owner}")):
            seen[f"{name} {who}"] = edge.https_status(
                running, path(target, name), secret, scheme=SCHEMES[name]
            )
        want |= {f"{name} owner": 200, f"{name} other_user": 403}
    seen[f"{API_KEY} jwt_only_rule"] = edge.https_status(
        running, f"/api/v1/users/{subject}", secrets[API_KEY][0], scheme=SCHEMES[API_KEY]
    )
    wrong = {key: (seen[key], status) for key, status in want.items() if seen[key] != status}
    if wrong:
        raise RuntimeError(f"credentials: got (status, expected) {wrong}")
    return seen


def run_section(ctx: Ctx) -> dict[str, Any]:
    t = ctx.timing
    per_load = t.edge_saturation_s + t.warmup_s + LOAD_OVERHEAD_S
    if ctx.out_of_time(START_S + MINT_S + 2 * t.credential_rounds * per_load + RESERVE_S):
        return {"skipped": "time budget"}
    try:
        return {"rounds": t.credential_rounds, **measure(ctx, per_load)}
    except Exception as exc:  # the sections after this one still run
        ctx.notes.append(f"credentials: failed ({describe(exc)})")
        return {"failed": describe(exc)}


def measure(ctx: Ctx, per_load: float) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        provider = None
        try:
            provider = stack.enter_context(running_provider())
        except ProviderMissingError as exc:
            ctx.notes.append(f"credentials: no introspected token measured ({exc})")
        return _measure(ctx, per_load, provider)
    raise AssertionError("not reached")  # pragma: no cover - ExitStack does not swallow


def _measure(ctx: Ctx, per_load: float, provider: Provider | None) -> dict[str, Any]:
    t = ctx.timing
    tag = "edgeguard-credentials"
    policy = write_policy(ctx.dir("configs", tag) / "authz-policy.yaml", provider)
    with stage(ctx, "credentials: start the stack"):
        running = edge.start_with_policy(ctx, tag=tag, authz_config=policy, scope=SCOPE)
    try:
        assert running.stack is not None
        subject, jwt = running.tokens[0]
        with stage(ctx, "credentials: mint an API key with the CLI"):
            key = mint_key(running.stack.config_dir / "authz.yaml", subject)
        secrets = {JWT: (jwt, subject), API_KEY: (key, subject)}
        if provider is not None:
            opaque, _ = provider.token(scope=OPAQUE_SCOPE)
            secrets[OPAQUE] = (opaque, APP[0])  # client credentials: the client is the subject
        verified = verify(running, secrets)
        loaders = {
            name: _loader(ctx, running, name, secret, owner)
            for name, (secret, owner) in secrets.items()
        }
        with stage(ctx, f"credentials: {t.credential_rounds} alternating rounds of each"):
            loads = rounds.run_rounds(
                ctx, loaders, t.credential_rounds, what="credentials",
                may_continue=lambda: ctx.remaining() > len(loaders) * per_load + RESERVE_S,
            )  # fmt: skip
    finally:
        running.stop()
    return summarize(loads, subject=subject, verified=verified, command=running.command)


def _loader(
    ctx: Ctx, running: edge.Edge, name: str, secret: str, owner: str
) -> Callable[[int], dict[str, Any]]:
    """One saturation load of `name` (the edge section's connections and streams): every
    h2load process GETs its subject's own id with `secret`."""
    t = ctx.timing
    shape = Shape(t.conns, t.edge_streams, t.edge_saturation_s, t.warmup_s)
    header = f"authorization: {SCHEMES[name]} {secret}"
    url = running.url_base + path(owner, name)
    same = [Client(url, None, (header,))] * max(2, ctx.timing.clients)

    def load(index: int) -> dict[str, Any]:
        label = f"round-{index + 1}"
        out = edge.load(ctx, running, shape, label, clients=same, name=f"credentials-{name}")
        out["command"] = out["command"].replace(secret, MARKS[name])
        refused = {status: n for status, n in out["statuses"].items() if status != "200"}
        if refused:  # h2load counts any 2xx as a success; a 401 would be other work
            ctx.notes.append(f"credentials {name} {label}: answers other than 200: {refused}")
        return out

    return load


def summarize(loads: dict[str, list[dict[str, Any]]], **facts: Any) -> dict[str, Any]:
    """Per credential: every round, the median-rate load and the median-server-CPU load;
    the API key's difference from the JWT, per round and as medians."""
    figures = {
        name: {
            "sent": f"Authorization: {SCHEMES[name]} ...",
            "rounds": got,
            "saturation": rounds.median_load(got, lambda x: float(x["rate_rps"])),
            "cpu_load": rounds.median_load(got, edge_budget.server_us),
        }
        for name, got in loads.items()
    }
    difference = _difference(loads[API_KEY], loads[JWT])
    out = {"credentials": figures, "difference": difference, **facts}
    if OPAQUE in loads:
        out["introspected_difference"] = _difference(loads[OPAQUE], loads[JWT])
    return out


def _difference(other: list[dict[str, Any]], jwt: list[dict[str, Any]]) -> dict[str, Any]:
    """A credential's difference from the JWT: medians of the per-round differences."""
    per_round = [key_minus_jwt(o, j) for o, j in zip(other, jwt, strict=False)]
    processes = dict.fromkeys(p for d in per_round for p in d["us_by_process"])
    return {
        "rate_ratio": rounds.median([d["rate_ratio"] for d in per_round if d["rate_ratio"]]),
        "us_by_process": {
            p: rounds.median([d["us_by_process"].get(p, 0.0) for d in per_round]) for p in processes
        },
        "per_round": per_round,
    }


def key_minus_jwt(key_load: dict[str, Any], jwt_load: dict[str, Any]) -> dict[str, Any]:
    """One round: µs per request by process (and the servers' sum), API key minus JWT,
    and the API key's rate over the JWT's."""
    key, jwt = edge_budget.budget(API_KEY, key_load, 1), edge_budget.budget(JWT, jwt_load, 1)
    if key is None or jwt is None:
        return {"rate_ratio": None, "us_by_process": {}}
    names = dict.fromkeys([*edge_budget.PROCESS_ORDER, *key.us_by_process, *jwt.us_by_process])
    us = {n: key.us_by_process.get(n, 0.0) - jwt.us_by_process.get(n, 0.0) for n in names}
    return {
        "rate_ratio": round(key.rate_rps / jwt.rate_rps, 3),
        "us_by_process": us | {"servers": key.server_us - jwt.server_us},
    }
