"""`authz-service revoke`: write a revocation to Redis, or list the revocations in force.

    authz-service revoke --config FILE --issuer ISS --jti J          [--ttl-seconds N]
    authz-service revoke --config FILE --issuer ISS --sub S [--before RFC3339|now] [--ttl-seconds N]
    authz-service revoke --config FILE --list [--issuer ISS]

It reads the `revocation:` section (and the issuers) of the authz config file. It prints
identifiers (issuer, jti, sub) and times, never a token; a --jti or --sub that looks like
a JWT is refused, so a token pasted by mistake is not stored in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz_service.revocation.settings import (
    RevocationSettings,
    configured_issuers,
    load_revocation_settings,
)
from authz_service.revocation.snapshot import (
    MAX_IDENTIFIER_CHARS,
    Entry,
    RevokedJti,
    jti_entry,
    subject_entry,
)
from authz_service.revocation.store import RedisRevocationStore, RevocationStoreError
from sidecar_runtime.clock import Clock, SystemClock
from sidecar_runtime.errors import ConfigError

USAGE_ERROR = 2
STORE_ERROR = 1
_LOOKS_LIKE_JWT = re.compile(r"[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


class UsageError(Exception):
    pass


def add_revoke_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `revoke` to an argparse sub-parser collection (`parser.add_subparsers()`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "revoke", help="revoke a token (by jti) or a subject's tokens; --list shows them"
    )
    parser.add_argument("--config", required=True, type=Path, help="the authz config file")
    parser.add_argument("--issuer", help="the tokens' iss, exactly as configured")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", help="revoke the one token with this jti")
    what.add_argument("--sub", help="revoke every token of this subject issued before --before")
    what.add_argument("--list", action="store_true", help="show the revocations in force")
    parser.add_argument("--before", default="now", help="with --sub: RFC 3339 time or now")
    parser.add_argument(
        "--ttl-seconds",
        type=int,
        help="keep the revocation this long (default: the longest token life)",
    )
    return parser


def run_revoke(args: argparse.Namespace, *, clock: Clock | None = None) -> int:
    """Carry out a parsed `revoke` command; the process exit code."""
    try:
        settings = load_revocation_settings(args.config)
        return asyncio.run(_run(args, settings, clock or SystemClock()))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UsageError as exc:
        print(f"revoke: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except RevocationStoreError as exc:
        print(f"revoke: redis unavailable ({exc}); nothing changed", file=sys.stderr)
        return STORE_ERROR


async def _run(args: argparse.Namespace, settings: RevocationSettings, clock: Clock) -> int:
    entry = None if args.list else _requested_entry(args, settings, clock)
    store = RedisRevocationStore.from_settings(settings)
    try:
        if entry is None:
            if args.list:
                loaded = await store.load(now=clock.now())
                _print_list(loaded.entries, issuer=args.issuer, now=clock.now())
                return 0
            print("nothing to revoke: every token issued before that has already expired")
            return 0
        stored, version = await store.write(entry, now=clock.now())
        print(_describe(stored, now=clock.now()) + f" (version {version})")
        return 0
    finally:
        await store.close()


def _requested_entry(
    args: argparse.Namespace, settings: RevocationSettings, clock: Clock
) -> Entry | None:
    """The entry the arguments ask for; None when it would already have expired."""
    if not args.issuer:
        raise UsageError("--issuer is required with --jti and --sub")
    issuers = configured_issuers(args.config)
    if issuers and args.issuer not in issuers:
        raise UsageError(f"issuer {args.issuer!r} is not configured (configured: {issuers})")
    if args.ttl_seconds is not None and args.ttl_seconds <= 0:
        raise UsageError("--ttl-seconds must be positive")
    now = clock.now()
    if args.jti is not None:
        if args.before != "now":
            raise UsageError("--before goes with --sub")
        _check_identifier("--jti", args.jti)
        ttl = args.ttl_seconds or settings.max_token_lifetime_seconds
        return jti_entry(issuer=args.issuer, jti=args.jti, now=now, ttl_seconds=ttl)
    _check_identifier("--sub", args.sub)
    entry = subject_entry(
        issuer=args.issuer,
        subject=args.sub,
        before=parse_before(args.before, now=now),
        now=now,
        max_token_lifetime=settings.max_token_lifetime_seconds,
    )
    if args.ttl_seconds is not None:
        entry = replace(entry, expires_at=now + args.ttl_seconds)
    return entry if entry.expires_at > now else None


def _check_identifier(flag: str, value: str) -> None:
    if not value or len(value) > MAX_IDENTIFIER_CHARS:
        raise UsageError(f"{flag} must be 1 to {MAX_IDENTIFIER_CHARS} characters")
    if _LOOKS_LIKE_JWT.fullmatch(value):
        # Never echo it back: it may be a live token.
        raise UsageError(f"{flag} looks like a whole token, not an identifier; nothing stored")


def parse_before(text: str, *, now: float) -> float:
    """`now`, or an RFC 3339 time with an offset, not in the future."""
    if text == "now":
        return now
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--before {text!r} is not an RFC 3339 time or 'now'") from None
    if moment.tzinfo is None:
        raise UsageError(f"--before {text!r} needs an offset (Z or +HH:MM)")
    when = moment.timestamp()
    if when > now:
        raise UsageError(f"--before {text!r} is in the future")
    return when


def _rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _describe(entry: Entry, *, now: float) -> str:
    until = f"until {_rfc3339(entry.expires_at)} (ttl {round(entry.expires_at - now)} s)"
    if isinstance(entry, RevokedJti):
        return f"revoked jti {entry.jti!r} of issuer {entry.issuer!r} {until}"
    return (
        f"revoked every token of sub {entry.subject!r} of issuer {entry.issuer!r} "
        f"issued before {_rfc3339(entry.revoked_before)} {until}"
    )


def _print_list(entries: list[Entry], *, issuer: str | None, now: float) -> None:
    shown = [e for e in entries if issuer is None or e.issuer == issuer]
    for entry in sorted(shown, key=lambda e: (e.issuer, type(e).__name__, e.identity)):
        if isinstance(entry, RevokedJti):
            print(f"jti {entry.jti!r} issuer {entry.issuer!r} until {_rfc3339(entry.expires_at)}")
        else:
            print(
                f"sub {entry.subject!r} issuer {entry.issuer!r} "
                f"before {_rfc3339(entry.revoked_before)} until {_rfc3339(entry.expires_at)}"
            )
    print(f"{len(shown)} revocation(s)")
