"""`ratelimit-service serve | check-config | explain` (also `python -m ratelimit_service`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ratelimit_service.limits.config import load_rules
from ratelimit_service.limits.planner import DescriptorRequest, Plan, Request, cost_of, plan
from ratelimit_service.limits.rules import Limit, RuleSet
from ratelimit_service.settings import ServiceSettings, load_settings
from sidecar_runtime import loops
from sidecar_runtime.config import read_yaml
from sidecar_runtime.errors import ConfigError
from sidecar_runtime.logs import configure_logging
from sidecar_runtime.workers import run_workers, worker_index

DEFAULT_SETTINGS = Path("config/ratelimit/service.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratelimit-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ShouldRateLimit gRPC service")
    serve.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS)
    serve.add_argument("--rules", type=Path, help="rule file or directory (overrides settings)")
    serve.add_argument("--listen", help="HOST:PORT (overrides settings)")
    store = serve.add_mutually_exclusive_group()
    store.add_argument("--redis-url", help="use this standalone Redis (overrides settings)")
    store.add_argument("--memory", action="store_true", help="use the in-process store")

    check = sub.add_parser("check-config", help="validate rule files and/or a settings file")
    check.add_argument(
        "paths", type=Path, nargs="+", help="rule files, directories, or settings files"
    )
    _merge_option(check)

    explain = sub.add_parser("explain", help="show which rules match a descriptor")
    explain.add_argument(
        "--config", type=Path, required=True, help="rule file, directory, or settings file"
    )
    _merge_option(explain)
    explain.add_argument("--domain", required=True)
    explain.add_argument(
        "--descriptor",
        action="append",
        required=True,
        help="k=v,k2=v2 (repeat for several descriptors in one request)",
    )
    explain.add_argument("--hits", type=int, default=0, help="the request's hits_addend")
    explain.add_argument("--key-prefix", default="rl:")
    return parser


def _merge_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--merge-domains",
        action="store_true",
        help="let several rule files add to one domain (a settings file's merge_domains"
        " also turns this on)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "check-config":
            return _check(args.paths, merge_domains=args.merge_domains)
        return _explain(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ConfigError.exit_code


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.rules is not None:
        out["rules"] = str(args.rules.resolve())
    if args.listen is not None:
        out["server"] = {"listen": args.listen}
    if args.redis_url is not None:
        out["store"] = {"type": "redis", "url": args.redis_url, "sentinel": None, "cluster": None}
    if args.memory:
        out["store"] = {"type": "memory", "url": None, "sentinel": None, "cluster": None}
    return out


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    settings = load_settings(args.settings, _overrides(args))
    # Refuse to start on bad rules, before anything else.
    load_rules(settings.rules, merge_domains=settings.merge_domains)
    configure_logging("ratelimit_service", settings.log.level)
    workers = settings.server.workers
    if workers > 1 and worker_index() is None:
        return run_workers(workers, [sys.executable, "-m", "ratelimit_service", *argv])
    from ratelimit_service.app import serve  # grpc and redis only for `serve`

    return loops.run(serve(settings, reuse_port=workers > 1), stack=settings.server.stack)


def _is_settings_file(path: Path) -> bool:
    if path.is_dir():
        return False
    data = read_yaml(path)
    return isinstance(data, dict) and "domain" not in data and ("rules" in data or "server" in data)


def _load(path: Path, *, merge_domains: bool) -> tuple[RuleSet, ServiceSettings | None]:
    """The rules a path names: rule files, or a settings file's `rules` (and its
    `merge_domains`, which the command line's can only turn on)."""
    if not _is_settings_file(path):
        return load_rules(path, merge_domains=merge_domains), None
    settings = load_settings(path)
    merge = merge_domains or settings.merge_domains
    return load_rules(settings.rules, merge_domains=merge), settings


def _check(paths: Sequence[Path], *, merge_domains: bool) -> int:
    for path in paths:
        rules, settings = _load(path, merge_domains=merge_domains)
        if settings is not None:
            print(f"ok: settings {path} (store {settings.store.type}, rules {settings.rules})")
        for name, domain in sorted(rules.domains.items()):
            print(f"ok: domain {name!r} from {domain.source}")
    return 0


def _parse_descriptor(text: str) -> DescriptorRequest:
    entries = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: descriptor entry {part!r} is not key=value")
        entries.append((key, value))
    return DescriptorRequest(tuple(entries))


def _describe(limit: Limit) -> str:
    if limit.unlimited:
        return f"{limit.rule_id}: unlimited"
    if limit.blocks_all:
        return f"{limit.rule_id}: 0 per {limit.unit} (blocks every request), {_mode(limit)}"
    per = f"{limit.unit_multiplier} {limit.unit}s" if limit.unit_multiplier > 1 else limit.unit
    every = limit.window_seconds / limit.requests_per_unit
    return (
        f"{limit.rule_id}: {limit.requests_per_unit} per {per}, burst {limit.burst}"
        f" (one token every {every:g}s), {_mode(limit)}"
    )


def _mode(limit: Limit) -> str:
    modes = []
    if limit.shadow:
        modes.append("shadow mode (logged, not enforced)")
    if limit.quota:
        modes.append("quota mode (denies only when every quota descriptor of the request is over)")
    return ", ".join(modes) or "enforced"


def _explain(args: argparse.Namespace) -> int:
    rules, _ = _load(args.config, merge_domains=args.merge_domains)
    domain = rules.domain(args.domain)
    if domain is None:
        print(f"domain {args.domain!r} is not configured: every descriptor is allowed")
        return 0
    request = Request(args.domain, tuple(_parse_descriptor(d) for d in args.descriptor), args.hits)
    the_plan = plan(domain, request, prefix=args.key_prefix, hash_tags=False)
    print(f"domain {domain.name!r} ({domain.source})")
    for index, descriptor in enumerate(request.descriptors):
        _explain_descriptor(the_plan, request, index, descriptor)
    for limit in the_plan.replaced:
        print(f"replaced (not applied): {limit.rule_id}")
    return 0


def _explain_descriptor(
    the_plan: Plan, request: Request, index: int, descriptor: DescriptorRequest
) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in descriptor.entries)
    print(f"descriptor {index + 1}: {shown} (cost {cost_of(request, descriptor)})")
    match = the_plan.matches[index]
    if match is None:
        print("  no rule matches: not limited")
        return
    how = ", ".join(
        f"{k} by {kind}" for (k, _), kind in zip(descriptor.entries, match.kinds, strict=True)
    )
    print(f"  matches {match.node.path} ({how})")
    print(f"  stats {match.stat_key}")
    if the_plan.unlimited[index]:
        print("  unlimited")
    for check in (c for c in the_plan.checks if c.index == index):
        print(f"  limit {_describe(check.limit)}")
        print(f"    bucket {check.key}")
