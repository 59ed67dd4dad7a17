"""Most-specific-wins route matching over a segment trie, independent of file order.

Which rule wins (the contract the tests assert):

1. **Host.** Rules are grouped by host: rules naming the exact host, then wildcard rules
   (`*.example.com` matches any name ending in `.example.com`, never `example.com`
   itself) from the longest suffix to the shortest, then rules without `hosts`. The first
   group containing a rule that matches path *and* method wins; when a group has none,
   the next, less specific group is tried.
2. **Path**, segment by segment from the left: a literal segment beats `{param}`, which
   beats `{rest...}`. If the preferred branch leads to no rule matching the rest of the
   path and the method, the matcher backtracks and tries the next branch. So for
   `/a/{x}/c` and `/a/b/{y}`, the path `/a/b/c` goes to `/a/b/{y}`: the literal `b` at
   segment 2 is decided before segment 3 is looked at.
3. **Method.** Within one template, a rule listing the request's method beats a `*` rule.
   Methods are exact: `HEAD` does not match a `GET` rule (list it if you want it).
   A method miss is a miss like any other, so matching backtracks past it (rule 2).

Path details: segments are compared after percent-decoding (see `paths`); literals are
case-sensitive; a request path with a trailing slash (`/a/b/`) matches no rule, not even
`/a/b` or `/a/{rest...}`, because an upstream may serve a different resource there; only
the root template `/` matches `/`. No match means no rule: the caller denies (allow-list).

Every trie node sits at a fixed depth, so backtracking visits each node at most once:
matching costs O(path depth) in the usual case and O(trie nodes) at worst.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authz_service.policy.rules import CompiledRule
from authz_service.policy.settings import ANY_METHOD
from authz_service.policy.template import SegmentKind

ANY_HOST = "any host"


class RouteConflict(Exception):  # noqa: N818 - internal signal, translated by the policy
    """Two rules claim the same (host, path shape, method)."""

    def __init__(self, existing: CompiledRule, where: str) -> None:
        self.existing = existing
        self.where = where
        super().__init__(where)


@dataclass(slots=True)
class _MethodTable:
    by_method: dict[str, CompiledRule] = field(default_factory=dict)
    any_method: CompiledRule | None = None

    def add(self, rule: CompiledRule, host_group: str) -> None:
        for method in rule.methods:
            existing = self.any_method if method == ANY_METHOD else self.by_method.get(method)
            if existing is not None:
                raise RouteConflict(existing, f"{method} {rule.template.shape} on {host_group}")
            if method == ANY_METHOD:
                self.any_method = rule
            else:
                self.by_method[method] = rule

    def pick(self, method: str) -> CompiledRule | None:
        rule = self.by_method.get(method)
        return rule if rule is not None else self.any_method

    def ordered(self, method: str) -> list[CompiledRule]:
        """Every rule here, the one `pick` chooses first (for explain)."""
        first = [r for r in (self.by_method.get(method), self.any_method) if r is not None]
        others = {r.name: r for r in self.by_method.values() if r not in first}
        return first + [others[name] for name in sorted(others)]


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    rest: _MethodTable | None = None  # rules whose template ends in {name...} here
    leaf: _MethodTable | None = None  # rules whose template ends exactly here

    def insert(self, rule: CompiledRule, host_group: str) -> None:
        node = self
        for seg in rule.template.segments:
            if seg.kind is SegmentKind.REST:
                node.rest = node.rest or _MethodTable()
                node.rest.add(rule, host_group)
                return
            if seg.kind is SegmentKind.PARAM:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literals.setdefault(seg.text, _Node())
        node.leaf = node.leaf or _MethodTable()
        node.leaf.add(rule, host_group)

    def find(self, segments: tuple[str, ...], depth: int, method: str) -> CompiledRule | None:
        if depth == len(segments):
            return self.leaf.pick(method) if self.leaf is not None else None
        child = self.literals.get(segments[depth])
        if child is not None:
            found = child.find(segments, depth + 1, method)
            if found is not None:
                return found
        if self.param is not None:
            found = self.param.find(segments, depth + 1, method)
            if found is not None:
                return found
        # A rest parameter needs at least one segment, which depth < len guarantees.
        return self.rest.pick(method) if self.rest is not None else None

    def collect(self, segments: tuple[str, ...], depth: int, method: str) -> list[CompiledRule]:
        """Every rule whose template matches, in the order `find` prefers them."""
        if depth == len(segments):
            return self.leaf.ordered(method) if self.leaf is not None else []
        found: list[CompiledRule] = []
        child = self.literals.get(segments[depth])
        if child is not None:
            found += child.collect(segments, depth + 1, method)
        if self.param is not None:
            found += self.param.collect(segments, depth + 1, method)
        if self.rest is not None:
            found += self.rest.ordered(method)
        return found


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rule whose host and path match a request, as `explain_match` reports it."""

    rule: CompiledRule
    host_group: str  # "api.example.com", "*.example.com" or "any host"
    method_matches: bool
    selected: bool


class Router:
    """Rules grouped by host, each group a segment trie."""

    def __init__(self) -> None:
        self._exact: dict[str, _Node] = {}
        self._wildcard: dict[str, _Node] = {}  # keyed by suffix: ".example.com"
        self._any = _Node()

    def add(self, rule: CompiledRule) -> None:
        """Insert `rule`; raise RouteConflict if another rule has the same match key."""
        if rule.hosts is None:
            self._any.insert(rule, ANY_HOST)
            return
        for host in rule.hosts:
            table = self._wildcard if host.startswith("*.") else self._exact
            key = host[1:] if host.startswith("*.") else host
            table.setdefault(key, _Node()).insert(rule, host)

    def find(self, host: str, method: str, segments: tuple[str, ...]) -> CompiledRule | None:
        """The winning rule for a normalised host and decoded segments, or None."""
        exact = self._exact.get(host)
        if exact is not None:
            rule = exact.find(segments, 0, method)
            if rule is not None:
                return rule
        if self._wildcard:
            for _, root in self._wildcard_groups(host):
                rule = root.find(segments, 0, method)
                if rule is not None:
                    return rule
        return self._any.find(segments, 0, method)

    def candidates(self, host: str, method: str, segments: tuple[str, ...]) -> list[Candidate]:
        """Every rule matching host and path, most specific first; the winner is marked."""
        out: list[Candidate] = []
        winner_seen = False
        for group, root in self._groups(host):
            for rule in root.collect(segments, 0, method):
                method_ok = ANY_METHOD in rule.methods or method in rule.methods
                selected = method_ok and not winner_seen
                winner_seen = winner_seen or selected
                out.append(Candidate(rule, group, method_ok, selected))
        return out

    def _groups(self, host: str) -> list[tuple[str, _Node]]:
        """The host groups for `host`, most specific first (the order `find` uses)."""
        exact = self._exact.get(host)
        groups = [(host, exact)] if exact is not None else []
        groups += self._wildcard_groups(host)
        groups.append((ANY_HOST, self._any))
        return groups

    def _wildcard_groups(self, host: str) -> list[tuple[str, _Node]]:
        # Leftmost dot first = longest suffix first; the label before it must be
        # non-empty, so "*.example.com" never matches "example.com" or ".example.com".
        groups = []
        dot = host.find(".", 1)
        while dot > 0:
            node = self._wildcard.get(host[dot:])
            if node is not None:
                groups.append(("*" + host[dot:], node))
            dot = host.find(".", dot + 1)
        return groups
