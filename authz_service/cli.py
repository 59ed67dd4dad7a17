"""`authz-service serve | check-config | explain`.

serve --config FILE           run the sidecar (workers, reload on SIGHUP and file change)
check-config FILE             validate a config without serving; exit 2 with file/key/reason
explain --config FILE ...     decide one request offline and print why
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz_service.apikeys import commands as apikey_commands
from authz_service.body.settings import schema_file_path
from authz_service.compiled_config import CompiledConfig, compile_config, load_compiled_config
from authz_service.config_holder import ConfigHolder
from authz_service.jwks import ProxyConfig
from authz_service.policy import RequestFacts
from authz_service.readiness import ReadinessMonitor
from authz_service.revocation import (
    RedisRevocationStore,
    RevocationList,
    add_revoke_parser,
    run_revoke,
)
from authz_service.servicer import SERVICE_NAME, AuthorizationServicer, add_to_server
from authz_service.settings import AuthzSettings, load_settings
from authz_service.telemetry import AuthzTelemetry
from authz_service.tokens.algorithms import allow_list
from authz_service.tokens.describe import describe_token
from sidecar_runtime import loops
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import SystemClock
from sidecar_runtime.errors import ConfigError
from sidecar_runtime.logs import configure_logging
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.reload import FileWatcher
from sidecar_runtime.server import ServiceBinding, SidecarServer, serve_until_signalled
from sidecar_runtime.telemetry import setup_telemetry
from sidecar_runtime.workers import run_workers, worker_index

log = logging.getLogger("authz_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz-service", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ext_authz gRPC sidecar")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument("--log-level", default="INFO")
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config", type=Path)
    explain = sub.add_parser("explain", help="decide one request offline and say why")
    explain.add_argument("--config", required=True, type=Path)
    explain.add_argument("--method", default="GET")
    explain.add_argument("--path", required=True)
    explain.add_argument("--host", default="localhost")
    explain.add_argument("--token", help="a JWT (sent as Authorization: Bearer)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME: VALUE", help="repeatable"
    )
    explain.add_argument(
        "--body-file", type=Path, help="the request body, as Envoy would forward it"
    )
    explain.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Envoy context extension (repeatable): chooses the rule set",
    )
    explain.add_argument("--client-address", default="127.0.0.1")
    explain.add_argument("--peer-principal", default="")
    apikey_commands.add_parser(sub)  # authz-service apikey ... (authz_service.apikeys)
    add_revoke_parser(sub)  # authz-service revoke ... (authz_service.revocation)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "explain":
            return asyncio.run(_explain(args))
        if args.command == "apikey":
            return apikey_commands.run(args)
        if args.command == "revoke":  # needs only the issuers and the revocation section
            return run_revoke(args)
        settings = load_settings(args.config)  # refuse to start on a bad config, before workers
        _proxies()  # and on unusable proxy variables
        configure_logging("authz", args.log_level)
        if settings.server.workers > 1 and worker_index() is None:
            return run_workers(settings.server.workers)
        reuse_port = settings.server.workers > 1
        loops.run(_serve(args.config, settings, reuse_port=reuse_port), stack=settings.server.stack)
        return 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return exc.exit_code


def _proxies() -> ProxyConfig:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and lowercase) for JWKS and discovery fetches."""
    try:
        return ProxyConfig.from_env()
    except ValueError as exc:
        variable, _, reason = str(exc).partition(": ")
        raise ConfigError("<environment>", variable, reason) from None


def _check_config(path: Path) -> int:
    settings = load_settings(path)
    compile_config(settings, path, clock=SystemClock())
    print(f"{path}: OK ({len(settings.issuers)} issuer(s), {len(settings.routes)} route(s))")
    return 0


async def _serve(path: Path, settings: AuthzSettings, *, reuse_port: bool) -> None:
    clock = SystemClock()
    proxies = _proxies()
    telemetry = AuthzTelemetry(
        setup_telemetry("authz", settings.telemetry, worker=worker_index() or 0),
        settings.telemetry,
    )
    revocations, revocation_store = None, None
    if settings.revocation is not None:
        revocation_store = RedisRevocationStore.from_settings(settings.revocation)
        revocations = RevocationList(revocation_store, settings.revocation, clock=clock)
        await revocations.start()  # not ready if unreadable: health reports NOT_SERVING
    revoked = None if revocations is None else revocations.refusal
    compiled = await load_compiled_config(
        path,
        clock=clock,
        telemetry=telemetry,
        settings=settings,
        proxies=proxies,
        revoked=revoked,
    )
    audit = (
        AuditSink(settings.audit.target, max_backlog=settings.audit.max_backlog)
        if settings.audit.enabled
        else None
    )
    holder = ConfigHolder(
        compiled, clock=clock, telemetry=telemetry, proxies=proxies, revoked=revoked
    )
    telemetry.attach(holder.snapshot)
    # On the sync stack, Checks run on worker threads and hand key fetches to this loop.
    bridge = LoopBridge(asyncio.get_running_loop())
    servicer = AuthorizationServicer(holder, audit, telemetry, bridge=bridge)

    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: add_to_server(servicer, server),
    )
    server = SidecarServer(settings.server, [binding], reuse_port=reuse_port)
    # Health is SERVING only while the issuers have keys (authz_service.readiness).
    dependencies = {} if revocations is None else {"revocation_list": revocations.ready}
    readiness = ReadinessMonitor(holder, server.set_serving, dependencies=dependencies)
    port = await server.start(serving=False)
    await readiness.update()
    readiness.start()
    log.info(
        "authz-service serving",
        extra={
            "fields": {
                "listen": settings.server.listen,
                "port": port,
                "stack": settings.server.stack,
            }
        },
    )
    watcher = None
    if settings.reload.watch:
        watcher = FileWatcher(
            lambda: _watched_files(holder.current),
            holder.reload,
            interval=settings.reload.interval_seconds,
        )
        watcher.start()
    try:
        await serve_until_signalled(server, on_reload=holder.reload)
    finally:
        await readiness.stop()
        if watcher is not None:
            await watcher.stop()
        await holder.current.close()
        if revocations is not None and revocation_store is not None:
            await revocations.stop()
            await revocation_store.close()
        if audit is not None:
            audit.close()
        telemetry.telemetry.shutdown()


def _watched_files(compiled: CompiledConfig) -> list[Path]:
    """The config file and every file it names that a reload would read again."""
    base = compiled.source.parent
    files = [compiled.source]
    for issuer in compiled.settings.issuers:
        if issuer.jwks_file is not None:
            jwks = issuer.jwks_file
            files.append(jwks if jwks.is_absolute() else compiled.source.parent / jwks)
    settings = compiled.settings
    for routes in (settings.routes, *(rule_set.routes for rule_set in settings.rule_sets)):
        for route in routes:
            schema = None if route.body is None else schema_file_path(route.body, base)
            if schema is not None:
                files.append(schema)
    return files


async def _explain(args: argparse.Namespace) -> int:
    compiled = await load_compiled_config(args.config, clock=SystemClock(), proxies=_proxies())
    try:
        headers: dict[str, str] = {}
        authorization: list[str] = []
        for raw in args.header:
            name, _, value = raw.partition(":")
            if name.strip().lower() == "authorization":
                authorization.append(value.strip())
            else:
                headers[name.strip().lower()] = value.strip()
        if args.token:
            authorization.append(f"Bearer {args.token}")
        cookie = headers.pop("cookie", "")
        body = b"" if args.body_file is None else args.body_file.read_bytes()
        if args.body_file is not None:
            headers.setdefault("content-length", str(len(body)))
            headers.setdefault("content-type", "application/json")
        context = dict(item.partition("=")[::2] for item in args.context)
        facts = RequestFacts(
            method=args.method.upper(),
            raw_path=args.path,
            host=args.host,
            headers=headers,
            client_address=args.client_address,
            peer_principal=args.peer_principal,
            request_id="explain",
            raw_body=body,
            context=context,
        )
        decision = await compiled.decide(facts, authorization=tuple(authorization), cookie=cookie)
        explanation = _explanation(compiled, facts, decision)
        token = _bearer(authorization)
        if token is not None:
            # What the token claims next to what the config expects (never the token).
            explanation["token"] = describe_token(token)
            explanation["expected"] = _expected(compiled, explanation["token"].get("iss"))
        print(json.dumps(explanation, indent=2))
        return 0 if decision.lets_through else 1
    finally:
        await compiled.close()


def _bearer(authorization: Sequence[str]) -> str | None:
    for value in authorization:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _expected(compiled: CompiledConfig, iss: object) -> dict[str, Any]:
    """The config's side for a token claiming issuer `iss`: what it must match."""
    by_name = {issuer.issuer: issuer for issuer in compiled.settings.issuers}
    chosen = by_name.get(iss) if isinstance(iss, str) else None
    if chosen is None:
        return {"issuer": None, "configured_issuers": sorted(by_name)}
    source = compiled.tokens.key_sources()[chosen.issuer]
    ring = source.current()
    return {
        "issuer": chosen.issuer,
        "audiences": list(chosen.audiences),
        "algorithms": sorted(allow_list(chosen.algorithms)),
        "kids": None if ring is None else sorted(str(key.kid) for key in ring.keys),
        "keys_error": source.last_error(),
        "required_typ": chosen.required_typ,
        "leeway_seconds": chosen.leeway_seconds,
        "max_token_age_seconds": chosen.max_token_age_seconds,
        "now": int(time.time()),
    }


def _explanation(compiled: CompiledConfig, facts: RequestFacts, decision: Any) -> dict[str, Any]:
    match = None
    try:
        match = compiled.authorizer.rule_sets.choose(facts.context).policy.match(facts)
    except Exception as exc:  # the decision already says 400; show why
        match_info: dict[str, Any] = {"error": str(exc)}
    else:
        match_info = (
            {"rule": match.rule.name, "params": dict(match.params)} if match else {"rule": None}
        )
    principal = decision.principal
    return {
        "decision": "allow" if decision.allowed else "deny",
        "enforced": decision.enforced,
        "status": decision.status,
        "reason": decision.reason,
        "rule_set": decision.rule_set or None,
        "violations": [{"pointer": v.pointer, "reason": v.reason} for v in decision.violations]
        or None,
        "error": decision.error or None,
        "detail": decision.detail or None,
        "match": match_info,
        "required_scopes": list(decision.required_scopes) or None,
        "principal": None
        if principal is None
        else {
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scopes": sorted(principal.scopes),
            "roles": sorted(principal.roles),
            "client_id": principal.client_id,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
