"""`authz-service apikey create|list|show|rotate|revoke --config FILE ...`

create --subject S [--scopes "a b"] [--roles "r"] [--tenant T] [--plan P] [--ttl-days N]
    prints the new key on the first line of stdout (the only time it is ever shown),
    then its metadata as JSON
list                      every key's metadata (JSON), never a secret or a hash
show ID                   one key's metadata
rotate ID --overlap-seconds N [--ttl-days N]
                          a successor key (printed once, like create); the old key is
                          accepted N seconds more, then refused as `expired`
revoke ID                 refused from now on, on every replica within one second

The config file is the authz service's; only its `api_keys:` section is read. Refusals
(a bad value, a scope over the ceiling, an unknown id) print a message to stderr and
exit 2; Redis unreachable exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from authz_service.apikeys.errors import LifecycleError
from authz_service.apikeys.lifecycle import KeyLifecycle, NewKey
from authz_service.apikeys.records import KeyRecord
from authz_service.apikeys.redis_store import RedisKeyStore, redis_client
from authz_service.apikeys.settings import load_api_key_settings, load_peppers
from authz_service.apikeys.store import StoreUnavailable
from sidecar_runtime.clock import Clock, SystemClock
from sidecar_runtime.errors import ConfigError


def add_parser(commands: Any) -> None:
    """Add the `apikey` command group to the CLI's subparsers."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", required=True, type=Path, help="the authz config file")
    group = commands.add_parser("apikey", help="create, list, show, rotate or revoke API keys")
    actions = group.add_subparsers(dest="apikey_command", required=True)
    create = actions.add_parser("create", parents=[config], help="mint a key (shown once)")
    create.add_argument("--subject", required=True)
    create.add_argument("--scopes", default="", help="space-separated")
    create.add_argument("--roles", default="", help="space-separated")
    create.add_argument("--tenant", default="")
    create.add_argument("--plan", default="")
    create.add_argument("--ttl-days", type=int, help="default: api_keys.default_ttl_days")
    actions.add_parser("list", parents=[config], help="every key's metadata")
    show = actions.add_parser("show", parents=[config], help="one key's metadata")
    show.add_argument("key_id")
    rotate = actions.add_parser("rotate", parents=[config], help="issue a successor key")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap-seconds", type=float, required=True)
    rotate.add_argument("--ttl-days", type=int)
    revoke = actions.add_parser("revoke", parents=[config], help="refuse a key from now on")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace, *, clock: Clock | None = None) -> int:
    """Run one `apikey` command; the exit code."""
    try:
        return asyncio.run(_run(args, clock or SystemClock()))
    except (ConfigError, LifecycleError) as exc:
        print(f"apikey {args.apikey_command}: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"apikey {args.apikey_command}: Redis unavailable ({exc})", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, clock: Clock) -> int:
    settings = load_api_key_settings(args.config)
    store = RedisKeyStore(
        redis_client(settings), prefix=settings.redis_prefix, channel=settings.channel
    )
    lifecycle = KeyLifecycle(
        store=store,
        peppers=load_peppers(settings, args.config),
        key_prefix=settings.key_prefix,
        ceiling=settings.ceiling,
        default_ttl_days=settings.default_ttl_days,
        clock=clock,
    )
    try:
        return await _dispatch(args, lifecycle, clock)
    finally:
        await store.close()


async def _dispatch(args: argparse.Namespace, lifecycle: KeyLifecycle, clock: Clock) -> int:
    command = args.apikey_command
    if command == "create":
        new = await lifecycle.create(
            subject=args.subject,
            scopes=args.scopes.split(),
            roles=args.roles.split(),
            tenant=args.tenant,
            plan=args.plan,
            ttl_days=args.ttl_days,
        )
        _print_new(new, clock)
    elif command == "rotate":
        new = await lifecycle.rotate(
            args.key_id, overlap_seconds=args.overlap_seconds, ttl_days=args.ttl_days
        )
        _print_new(new, clock)
    elif command == "list":
        _print_json([describe(record, clock.now()) for record in await lifecycle.list()])
    elif command == "show":
        _print_json(describe(await lifecycle.show(args.key_id), clock.now()))
    else:
        _print_json(describe(await lifecycle.revoke(args.key_id), clock.now()))
    return 0


def describe(record: KeyRecord, now: float) -> dict[str, object]:
    """A record's public view and its status now (never the hash)."""
    if record.revoked is not None:
        status = "revoked"
    elif now >= record.ends_at():
        status = "expired"
    elif record.replaced_by is not None:
        status = "rotating"
    else:
        status = "active"
    return {"status": status, **record.public_view()}


def _print_new(new: NewKey, clock: Clock) -> None:
    print(new.key)
    _print_json(describe(new.record, clock.now()))
    print(
        "Store this key now: it is not stored anywhere and cannot be shown again.", file=sys.stderr
    )


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
