"""The shape of the first-party packages, read from their source with `ast`.

- No import cycles, type-only ones (under `if TYPE_CHECKING:`) included: a module that
  needs another's figures gets a callable or a small Protocol from a leaf module instead.
- The pure core takes plain values and a clock and returns plain values: neither it nor
  anything first-party it imports brings in grpc, redis, OpenTelemetry, the Envoy types,
  an event loop or a network client (STYLE.md, habits 1 and 13).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("authz_service", "ratelimit_service", "sidecar_runtime")

# The core: pure today, and kept so. Each may import only what these bans allow, and so
# may every first-party module it imports.
CORE = (
    "authz_service.apikeys",
    "authz_service.apikeys.cache",
    "authz_service.apikeys.errors",
    "authz_service.apikeys.format",
    "authz_service.apikeys.hashing",
    "authz_service.apikeys.records",
    "authz_service.apikeys.store",
    "authz_service.apikeys.verifier",
    "authz_service.body",
    "authz_service.body.parse",
    "authz_service.body.problem",
    "authz_service.body.schema",
    "authz_service.body.settings",
    "authz_service.body.verdict",
    "authz_service.credentials",
    "authz_service.identity_encoding",
    "authz_service.mtls",
    "authz_service.pipeline",
    "authz_service.principal",
    "authz_service.policy",
    "authz_service.policy.conditions",
    "authz_service.policy.evaluate",
    "authz_service.policy.paths",
    "authz_service.policy.policy",
    "authz_service.policy.router",
    "authz_service.policy.rule_sets",
    "authz_service.policy.rules",
    "authz_service.policy.settings",
    "authz_service.policy.template",
    "authz_service.tokens",
    "authz_service.tokens.algorithms",
    "authz_service.tokens.cache",
    "authz_service.tokens.claims",
    "authz_service.tokens.compact",
    "authz_service.tokens.describe",
    "authz_service.tokens.edwards",
    "authz_service.tokens.encoding",
    "authz_service.tokens.errors",
    "authz_service.tokens.jwk",
    "authz_service.tokens.refetch",
    "authz_service.tokens.verifier",
    "ratelimit_service.circuit_breaker",
    "ratelimit_service.decision",
    "ratelimit_service.descriptor_stats",
    "ratelimit_service.empty_buckets",
    "ratelimit_service.instruments",
    "ratelimit_service.limits",
    "ratelimit_service.limits.bucket",
    "ratelimit_service.limits.bucket_keys",
    "ratelimit_service.limits.planner",
    "ratelimit_service.limits.rules",
    "ratelimit_service.store",
    "sidecar_runtime.clock",
    "sidecar_runtime.correlation",
    "sidecar_runtime.errors",
    "sidecar_runtime.ids",
)
# Left out, and why (each does I/O, or imports what does):
#   authz_service.tokens.settings   builds ssl contexts from CA files at config load
#                                   (so `ssl` is banned below only in a core module itself)
#   authz_service.apikeys.{redis_store, fetching, lifecycle, commands, settings} and
#   authz_service.revocation (its package imports the Redis store and the CLI): Redis, files
#   authz_service.jwks (all of it: FetchingVerifier wires the pure verifier to each
#   issuer's key source), and so authz_service.{audit_line, instruments,
#                                   compiled_config, config_holder, readiness}:
#                                   fetch JWKS over the network, read key files
#   authz_service.{envoy_adapter, servicer, cli, settings, telemetry}: the Envoy types,
#                                   gRPC, file reads, OpenTelemetry
#   ratelimit_service.limits.config reads the rules file (load_rules)
#   ratelimit_service.errors        carries grpc status codes (imports grpc)
#   ratelimit_service.{guarded_store, service}: await the store under asyncio timeouts
#   ratelimit_service.decision_log  writes decision lines through sidecar_runtime.audit
#   ratelimit_service.debug_http    an HTTP listener
#   ratelimit_service.stores (all of it), ratelimit_service.{app, servicer, cli,
#   settings, telemetry}:           Redis, gRPC,
#                                   files, OpenTelemetry
#   sidecar_runtime (the rest)      servers, health, audit files, telemetry, loops, config

BANNED = (
    "grpc",
    "redis",
    "hiredis",
    "opentelemetry",
    "envoy",
    "google.protobuf",
    "asyncio",
    "socket",
    "selectors",
    "subprocess",
    "http",
    "urllib.request",
    "h11",
    "httpx",
    "aiohttp",
    "requests",
)
BANNED_IN_CORE_ITSELF = ("ssl",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> Mapping[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "_generated" not in path.parts:
                found[_module_name(path)] = path
    return found


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every name `module` imports, anywhere in it (TYPE_CHECKING blocks and functions
    included), relative imports resolved; `from pkg import sub` names the submodule."""
    modules = _sources()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in modules else target


@cache
def _imports() -> Mapping[str, frozenset[str]]:
    return {module: frozenset(_imported(module, path)) for module, path in _sources().items()}


def _graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports."""
    modules = _sources()
    return {
        module: {name for name in names if name in modules and name != module}
        for module, names in _imports().items()
    }


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                done.add(path.pop())
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def _ancestors(module: str) -> list[str]:
    """The packages whose `__init__` runs before `module` can be imported."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _closure(module: str, graph: Mapping[str, set[str]]) -> set[str]:
    """What importing `module` runs: its imports, theirs, and every package above each."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
            todo.extend(a for a in _ancestors(current) if a in graph)
    return seen


def _is_banned(name: str, banned: Iterable[str]) -> bool:
    return any(name == b or name.startswith(f"{b}.") for b in banned)


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_core_list_names_real_modules() -> None:
    assert set(CORE) <= set(_sources()), set(CORE) - set(_sources())


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_no_io(module: str) -> None:
    graph, imports = _graph(), _imports()
    found = sorted(name for name in imports[module] if _is_banned(name, BANNED_IN_CORE_ITSELF))
    for reached in sorted(_closure(module, graph)):
        found += [
            f"{name} (through {reached})" if reached != module else name
            for name in sorted(imports[reached])
            if _is_banned(name, BANNED)
        ]
    assert not found, f"{module} imports {', '.join(found)}"
