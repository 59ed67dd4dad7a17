"""`CompiledPolicy`: validated route settings turned into a router and CEL programs.

Compilation is where every cross-rule problem is found, each reported as
`ConfigError(source, "routes[i]...", reason)`:

    routes[i].name            duplicate rule name 'x' (first used by routes[j])
    routes[i]                 same match key as routes[j] ('x'): GET /a/{} on any host
    routes[i].conditions[k]   CEL does not compile: <input>:1:4: Syntax error: ...
    routes[i].conditions[k]   condition must evaluate to bool, but its type is string
    routes[i].conditions[k]   params.x is not a parameter of the path template (...)
    routes[i].conditions[k]   a public rule's condition cannot read `token` (...)

The object is immutable once built; a reload builds a new one and swaps it whole.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from authz_service.body import compile_body
from authz_service.policy.conditions import (
    CompiledCondition,
    ConditionCompileError,
    compile_condition,
)
from authz_service.policy.paths import normalise_host, parse_target
from authz_service.policy.router import Candidate, RouteConflict, Router
from authz_service.policy.rules import ENFORCE, CompiledRule, RequestFacts, RouteMatch
from authz_service.policy.settings import PolicySettings, RouteSettings
from authz_service.policy.template import parse_template
from sidecar_runtime.errors import ConfigError

_MATCH_MEMO_SIZE = 4_096
_MAX_MEMO_PATH = 256  # longer paths are matched every time (bounds the memo's memory)


class CompiledPolicy:
    """The allow-list, ready to match requests. Build it with `compile`."""

    __slots__ = ("_matches", "_router", "mode", "rules", "source")

    def __init__(
        self, rules: tuple[CompiledRule, ...], router: Router, source: str, mode: str = ENFORCE
    ) -> None:
        self.rules = rules
        self.source = source
        self.mode = mode  # what a request no rule matches falls under (the set's mode)
        self._router = router
        # (host, method, raw path) -> match: APIs see the same paths again and again, and
        # parsing + trie walk cost ~5 us. Bounded (oldest out first) and per compiled
        # policy, so a reload starts empty. Matches are shared: never mutate one.
        self._matches: dict[tuple[str, str, str], RouteMatch | None] = {}

    @classmethod
    def compile(
        cls, settings: PolicySettings, *, source: str, key_prefix: str = ""
    ) -> CompiledPolicy:
        """Compile validated settings; raise ConfigError naming the rule and key.

        `key_prefix` is prepended to key paths when the routes section is nested in a
        larger file (e.g. "policy." gives "policy.routes[3].conditions[0]")."""
        rules = tuple(
            _compile_rule(
                route, index=i, source=source, key_prefix=key_prefix, set_mode=settings.mode
            )
            for i, route in enumerate(settings.routes)
        )
        _check_unique_names(rules, source=source, key_prefix=key_prefix)
        router = Router()
        for rule in rules:
            try:
                router.add(rule)
            except RouteConflict as conflict:
                other = conflict.existing
                raise ConfigError(
                    source,
                    f"{key_prefix}routes[{rule.index}]",
                    f"same match key as routes[{other.index}] ({other.name!r}): {conflict.where}",
                ) from None
        return cls(rules, router, source, settings.mode)

    def match(self, facts: RequestFacts) -> RouteMatch | None:
        """The most specific rule for the request, or None (deny). Raises BadRequestPath."""
        key = (facts.host, facts.method, facts.raw_path)
        try:
            return self._matches[key]
        except KeyError:
            pass
        found = self._match(facts)
        if len(facts.raw_path) <= _MAX_MEMO_PATH:
            matches = self._matches
            if len(matches) >= _MATCH_MEMO_SIZE:
                # Another thread (the `sync` stack) may change the memo meanwhile.
                with contextlib.suppress(KeyError, RuntimeError):
                    del matches[next(iter(matches))]
            matches[key] = found
        return found

    def _match(self, facts: RequestFacts) -> RouteMatch | None:
        target = parse_target(facts.raw_path)
        if target.trailing_slash:
            return None
        host = normalise_host(facts.host)
        rule = self._router.find(host, facts.method, target.segments)
        if rule is None:
            return None
        params = rule.extract_params(target.segments) if rule.captures else {}
        return RouteMatch(rule, params, target.path, target.query, host)

    def explain(self, facts: RequestFacts) -> list[Candidate]:
        """Every rule whose host and path match, most specific first, the winner marked
        `selected` (what `match` returns). Not for the hot path. Raises BadRequestPath."""
        target = parse_target(facts.raw_path)
        if target.trailing_slash:
            return []
        return self._router.candidates(normalise_host(facts.host), facts.method, target.segments)


def explain_match(policy: CompiledPolicy, facts: RequestFacts) -> list[Candidate]:
    """The candidates `policy` considered for `facts` (see CompiledPolicy.explain)."""
    return policy.explain(facts)


def _compile_rule(
    route: RouteSettings, *, index: int, source: str, key_prefix: str, set_mode: str
) -> CompiledRule:
    template = parse_template(route.path)  # validated already, cannot fail
    body = None
    if route.body is not None:
        key = f"{key_prefix}routes[{index}].body"
        body = compile_body(route.body, file=source, key=key, base_dir=Path(source).parent)
    conditions = []
    for k, text in enumerate(route.conditions):
        try:
            conditions.append(_compile_one(route, text, k, template.param_names))
        except ConditionCompileError as exc:
            key = f"{key_prefix}routes[{index}].conditions[{k}]"
            raise ConfigError(source, key, str(exc)) from None
        fields = conditions[-1].request_fields
        if route.body is None and fields is not None and "body" in fields:
            key = f"{key_prefix}routes[{index}].conditions[{k}]"
            raise ConfigError(
                source, key, "reads request.body, but the rule declares no `body` schema"
            )
    return CompiledRule(
        name=route.name,
        index=index,
        methods=frozenset(route.methods),
        template=template,
        hosts=route.hosts,
        public=route.public,
        scopes=route.scopes,
        roles=frozenset(route.roles),
        conditions=tuple(conditions),
        body=body,
        mode=route.mode or set_mode,
        credentials=frozenset(route.credentials),
    )


def _compile_one(
    route: RouteSettings, text: str, index: int, param_names: tuple[str, ...]
) -> CompiledCondition:
    return compile_condition(
        text, index=index, param_names=param_names, allow_token=not route.public
    )


def _check_unique_names(rules: tuple[CompiledRule, ...], *, source: str, key_prefix: str) -> None:
    first_index: dict[str, int] = {}
    for rule in rules:
        if rule.name in first_index:
            raise ConfigError(
                source,
                f"{key_prefix}routes[{rule.index}].name",
                f"duplicate rule name {rule.name!r} (first used by "
                f"routes[{first_index[rule.name]}])",
            )
        first_index[rule.name] = rule.index
