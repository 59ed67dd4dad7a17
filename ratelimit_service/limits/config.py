"""Loading envoyproxy/ratelimit YAML rule files, unchanged, plus two extensions.

A rule file is exactly the reference's format (one domain per file)::

    domain: edge
    descriptors:
      - key: remote_address          # key only: every address gets its own bucket
        rate_limit: {unit: second, requests_per_unit: 20, burst: 40, name: per-address}
      - key: path
        value: /api/v1/public/*      # a `*` wildcard; trailing `*` is a prefix match
        shadow_mode: true
        rate_limit: {unit: minute, requests_per_unit: 600}
        descriptors: [...]           # nested descriptors

Reference keys: domain, descriptors, key, value, rate_limit {unit, requests_per_unit,
unlimited, name, replaces: [{name}], unit_multiplier}, shadow_mode, detailed_metric,
value_to_metric, share_threshold, metadata. `quota_mode: true` is refused (not supported).

Extensions (the reference cannot express these):

- `burst` in a rate limit: the bucket capacity (default: `requests_per_unit`).
- `rate_limits: [ {...}, {...} ]` on a descriptor instead of `rate_limit`: several limits
  on one node, e.g. 10/second burst 20 *and* 10000/day; a request must pass all of them.

Every problem is a `ConfigError(file, key_path, reason)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ratelimit_service.limits.rules import (
    UNIT_SECONDS,
    Domain,
    Level,
    Limit,
    Node,
    Pattern,
    RuleSet,
    make_limit,
)
from sidecar_runtime.config import Frozen, read_yaml, validate_model
from sidecar_runtime.errors import ConfigError

RULE_FILE_SUFFIXES = (".yaml", ".yml")
MAX_UINT32 = 2**32 - 1


def _scalar_text(value: Any) -> Any:
    # The reference's YAML decoder accepts `value: 200` for a string field.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[StrictStr, BeforeValidator(_scalar_text)]


class ReplacesModel(Frozen):
    name: StrictStr = Field(min_length=1)


class RateLimitModel(Frozen):
    unit: StrictStr | None = None
    requests_per_unit: StrictInt | None = Field(default=None, ge=0, le=MAX_UINT32)
    unlimited: StrictBool = False
    name: StrictStr = ""
    replaces: list[ReplacesModel] = []
    unit_multiplier: StrictInt | None = Field(default=None, ge=1, le=MAX_UINT32)
    burst: StrictInt | None = Field(default=None, ge=1, le=MAX_UINT32)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str | None) -> str | None:
        # The reference upper-cases the unit before looking it up: `Second` is fine.
        if unit is not None and unit.lower() not in UNIT_SECONDS:
            raise ValueError(
                f"invalid rate limit unit {unit!r} (one of: {', '.join(UNIT_SECONDS)})"
            )
        return unit.lower() if unit is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitModel:
        if self.unlimited:
            extra = [
                k
                for k in ("unit", "requests_per_unit", "burst", "unit_multiplier")
                if getattr(self, k) is not None
            ]
            if extra:
                raise ValueError(f"should not specify {', '.join(extra)} when unlimited")
        else:
            if self.unit is None:
                raise ValueError("unit is required unless unlimited is true")
            if self.requests_per_unit is None:
                raise ValueError("requests_per_unit is required (0 blocks every request)")
            if self.burst is not None and self.requests_per_unit == 0:
                raise ValueError("burst needs requests_per_unit above 0")
        if any(r.name == self.name for r in self.replaces) and self.name:
            raise ValueError("replaces should not contain the limit's own name")
        return self


class DescriptorModel(Frozen):
    key: Text = Field(min_length=1)
    value: Text | None = None
    rate_limit: RateLimitModel | None = None
    rate_limits: list[RateLimitModel] | None = Field(default=None, min_length=1)
    descriptors: list[DescriptorModel] | None = None
    shadow_mode: StrictBool = False
    detailed_metric: StrictBool = False
    value_to_metric: StrictBool = False
    share_threshold: StrictBool = False
    quota_mode: StrictBool = False
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DescriptorModel:
        if self.rate_limit is not None and self.rate_limits is not None:
            raise ValueError("use either rate_limit or rate_limits, not both")
        if self.rate_limits is not None and any(r.unlimited for r in self.rate_limits):
            raise ValueError("unlimited belongs in rate_limit, not in a rate_limits list")
        if self.share_threshold and "*" not in (self.value or ""):
            raise ValueError("share_threshold can only be used with a wildcard value")
        if self.quota_mode:
            raise ValueError("quota_mode is not supported by this service")
        return self

    @property
    def all_limits(self) -> list[RateLimitModel]:
        if self.rate_limit is not None:
            return [self.rate_limit]
        return list(self.rate_limits or [])


class RulesFileModel(Frozen):
    domain: Text = Field(min_length=1)
    descriptors: list[DescriptorModel] | None = None


def load_rule_file(path: Path) -> Domain:
    """Read, validate and compile one rule file."""
    model = validate_model(RulesFileModel, read_yaml(path), path)
    root = _compile_level(model.descriptors or [], model.domain, "", "descriptors", str(path))
    return Domain(name=model.domain, root=root, source=str(path))


def rule_files(path: Path) -> list[Path]:
    """The rule files a path names: itself, or the YAML files directly inside it."""
    if not path.exists():
        raise ConfigError(path, "<file>", "file not found")
    if not path.is_dir():
        return [path]
    files = sorted(
        p for p in path.iterdir() if p.suffix in RULE_FILE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(path, "<dir>", "no .yaml or .yml rule files in this directory")
    return files


def load_rules(paths: Path | Iterable[Path]) -> RuleSet:
    """Load every rule file under `paths`; one domain per file, no domain twice."""
    roots = [paths] if isinstance(paths, Path) else list(paths)
    domains: dict[str, Domain] = {}
    sources: list[str] = []
    for root in roots:
        for file in rule_files(root):
            domain = load_rule_file(file)
            if domain.name in domains:
                other = domains[domain.name].source
                raise ConfigError(
                    file, "domain", f"duplicate domain {domain.name!r}, also in {other}"
                )
            domains[domain.name] = domain
            sources.append(str(file))
    return RuleSet(domains=domains, sources=tuple(sources))


def _compile_level(
    descriptors: list[DescriptorModel], domain: str, parent: str, where: str, file: str
) -> Level:
    exact: dict[tuple[str, str], Node] = {}
    by_key: dict[str, Node] = {}
    wildcards: list[tuple[Pattern, Node]] = []
    for index, model in enumerate(descriptors):
        at = f"{where}[{index}]"
        value = model.value or None
        composite = model.key if value is None else f"{model.key}_{value}"
        path = f"{parent}.{composite}" if parent else composite
        if _is_duplicate(model.key, value, exact, by_key, wildcards):
            raise ConfigError(file, at, f"duplicate descriptor {composite!r} at this level")
        node = _compile_node(model, value, domain, path, at, file)
        if value is None:
            by_key[model.key] = node
        elif "*" in value:
            wildcards.append((Pattern(value), node))
        else:
            exact[(model.key, value)] = node
    return Level(exact=exact, wildcards=tuple(wildcards), by_key=by_key)


def _is_duplicate(
    key: str,
    value: str | None,
    exact: Mapping[tuple[str, str], Node],
    by_key: Mapping[str, Node],
    wildcards: list[tuple[Pattern, Node]],
) -> bool:
    if value is None:
        return key in by_key
    if "*" in value:
        return any(p.text == value and n.key == key for p, n in wildcards)
    return (key, value) in exact


def _compile_node(
    model: DescriptorModel, value: str | None, domain: str, path: str, at: str, file: str
) -> Node:
    limits = _compile_limits(model, domain, path)
    children = (
        _compile_level(model.descriptors, domain, path, f"{at}.descriptors", file)
        if model.descriptors
        else None
    )
    metadata: Mapping[str, Any] | None = model.metadata
    return Node(
        key=model.key,
        value=value,
        path=path,
        limits=limits,
        share_threshold=model.share_threshold,
        metadata=metadata,
        children=children,
    )


def _compile_limits(model: DescriptorModel, domain: str, path: str) -> tuple[Limit, ...]:
    configured = model.all_limits
    limits: list[Limit] = []
    seen_tags: dict[str, int] = {}
    for index, rl in enumerate(configured):
        rule_id = rl.name or f"{domain}.{path}" + (f"[{index}]" if len(configured) > 1 else "")
        unit = rl.unit or "second"
        multiplier = rl.unit_multiplier or 1
        base_tag = "unlimited" if rl.unlimited else f"{multiplier}{unit}"
        ordinal = seen_tags.get(base_tag, 0)
        seen_tags[base_tag] = ordinal + 1
        limits.append(
            make_limit(
                rule_id=rule_id,
                name=rl.name,
                requests_per_unit=rl.requests_per_unit or 0,
                unit=unit,
                unit_multiplier=multiplier,
                burst=rl.burst,
                shadow=model.shadow_mode,
                unlimited=rl.unlimited,
                replaces=frozenset(r.name for r in rl.replaces),
                tag=base_tag + (f"#{ordinal}" if ordinal else ""),
            )
        )
    return tuple(limits)
