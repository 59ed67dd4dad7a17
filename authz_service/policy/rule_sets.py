"""Rule sets: which compiled policy decides a request, chosen by Envoy's context.

The top-level `routes` are the default rule set. Each of `rule_sets` is chosen for the
requests whose Envoy context extensions (`ExtAuthzPerRoute.check_settings.
context_extensions`, set per route or virtual host in Envoy) hold every entry of its
`select`; the first such set in file order wins, and a request no set selects goes to
the default one. A client cannot set context extensions: only Envoy's config can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from authz_service.policy.policy import CompiledPolicy
from authz_service.policy.settings import PolicySettings, RuleSetSettings


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str  # "" for the default set
    select: tuple[tuple[str, str], ...]  # () for the default set
    policy: CompiledPolicy  # its `mode` is the set's

    def selects(self, context: Mapping[str, str]) -> bool:
        return all(context.get(key) == value for key, value in self.select)


class RuleSets:
    """The default rule set and the selectable ones, compiled; immutable."""

    __slots__ = ("default", "selectable")

    def __init__(self, default: RuleSet, selectable: Sequence[RuleSet] = ()) -> None:
        self.default = default
        self.selectable = tuple(selectable)

    @classmethod
    def compile(
        cls, default: PolicySettings, rule_sets: Sequence[RuleSetSettings], *, source: str
    ) -> RuleSets:
        """Compile every set; a ConfigError names `routes[i]...` or `rule_sets[j].routes[i]...`."""
        compiled = CompiledPolicy.compile(default, source=source)
        sets = [
            RuleSet(
                name=settings.name,
                select=tuple(sorted(settings.select.items())),
                policy=CompiledPolicy.compile(
                    settings.policy(), source=source, key_prefix=f"rule_sets[{j}]."
                ),
            )
            for j, settings in enumerate(rule_sets)
        ]
        return cls(RuleSet("", (), compiled), sets)

    def choose(self, context: Mapping[str, str]) -> RuleSet:
        """The rule set for a request with these context extensions."""
        if context:
            for rule_set in self.selectable:
                if rule_set.selects(context):
                    return rule_set
        return self.default

    def all(self) -> tuple[RuleSet, ...]:
        return (self.default, *self.selectable)
