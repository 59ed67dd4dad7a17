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
unlimited, name, replaces: [{name}]}, shadow_mode, quota_mode, detailed_metric,
value_to_metric, share_threshold, metadata. Accepted as the reference accepts them: a
`unit` without `requests_per_unit` (0 per unit: refuses every request), and `unlimited`
with `requests_per_unit` or a unit it does not know (both ignored). A domain in several
files is an error unless `merge_domains` (the reference's MERGE_DOMAIN_CONFIG), where
each file adds its descriptors to the domain.

Extensions (the reference cannot express these):

- `burst` in a rate limit: the bucket capacity (default: `requests_per_unit`).
- `unit_multiplier` in a rate limit: the window is that many units.
- `rate_limits: [ {...}, {...} ]` on a descriptor instead of `rate_limit`: several limits
  on one node, e.g. 10/second burst 20 *and* 10000/day; a request must pass all of them.

Every problem is a `ConfigError(file, key_path, reason)`. A reference key in a place the
reference ignores it (`unit` on a descriptor, say) is an error here: it is a mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
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
    sanitize_stat_name,
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
    # `unlimited` first: the unit's validator reads it.
    unlimited: StrictBool = False
    unit: StrictStr | None = None
    requests_per_unit: StrictInt | None = Field(default=None, ge=0, le=MAX_UINT32)
    name: StrictStr = ""
    replaces: list[ReplacesModel] = []
    unit_multiplier: StrictInt | None = Field(default=None, ge=1, le=MAX_UINT32)
    burst: StrictInt | None = Field(default=None, ge=1, le=MAX_UINT32)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str | None, info: ValidationInfo) -> str | None:
        # The reference upper-cases the unit before looking it up: `Second` is fine.
        if unit is None:
            return None
        known = unit.lower() in UNIT_SECONDS
        if info.data.get("unlimited"):
            if known:
                raise ValueError("should not specify rate limit unit when unlimited")
            return None  # the reference ignores a unit it does not know when unlimited
        if not known:
            raise ValueError(
                f"invalid rate limit unit {unit!r} (one of: {', '.join(UNIT_SECONDS)})"
            )
        return unit.lower()

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitModel:
        if self.unlimited:
            extra = [k for k in ("burst", "unit_multiplier") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"should not specify {', '.join(extra)} when unlimited")
        else:
            if self.unit is None:
                raise ValueError("unit is required unless unlimited is true")
            if self.burst is not None and not self.requests_per_unit:
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
        # The reference looks for `*` in the composite key, so a key with `*` will do.
        if self.share_threshold and "*" not in self.composite:
            raise ValueError("share_threshold can only be used with a wildcard value")
        return self

    @property
    def composite(self) -> str:
        """The reference's key for this descriptor at its level: `key` or `key_value`."""
        return f"{self.key}_{self.value}" if self.value else self.key

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
    model = _read(path)
    return _compile_domain(model.domain, [(str(path), model)])


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


def load_rules(paths: Path | Iterable[Path], *, merge_domains: bool = False) -> RuleSet:
    """Load every rule file under `paths`, one domain per file. With `merge_domains` (the
    reference's MERGE_DOMAIN_CONFIG) several files may define one domain, each adding its
    descriptors to it; without, a domain defined twice is an error."""
    roots = [paths] if isinstance(paths, Path) else list(paths)
    files = [file for root in roots for file in rule_files(root)]
    parts: dict[str, list[tuple[str, RulesFileModel]]] = {}
    for file in files:
        model = _read(file)
        earlier = parts.setdefault(model.domain, [])
        if earlier and not merge_domains:
            raise ConfigError(
                file, "domain", f"duplicate domain {model.domain!r}, also in {earlier[0][0]}"
            )
        earlier.append((str(file), model))
    domains = {name: _compile_domain(name, chunks) for name, chunks in parts.items()}
    return RuleSet(domains=domains, sources=tuple(str(file) for file in files))


def _read(path: Path) -> RulesFileModel:
    return validate_model(RulesFileModel, read_yaml(path), path)


def _compile_domain(name: str, parts: list[tuple[str, RulesFileModel]]) -> Domain:
    top = _LevelBuilder(domain=name, parent="")
    for file, model in parts:
        top.add(model.descriptors or [], where="descriptors", file=file)
    return Domain(name=name, root=top.build(), source=", ".join(file for file, _ in parts))


@dataclass
class _LevelBuilder:
    """One level of the tree while it is compiled; the files of a merged domain each add
    to its top level, as the reference's loadDescriptors does."""

    domain: str
    parent: str  # the path of the node above, "" at the top
    nodes: dict[str, Node] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # composite key -> its file
    wildcards: list[tuple[Pattern, Node]] = field(default_factory=list)

    def add(self, descriptors: list[DescriptorModel], *, where: str, file: str) -> None:
        for index, model in enumerate(descriptors):
            at = f"{where}[{index}]"
            composite = model.composite
            path = f"{self.parent}.{composite}" if self.parent else composite
            if composite in self.nodes:
                other = self.files[composite]
                also = f" (also in {other})" if other != file else ""
                reason = f"duplicate descriptor composite key '{self.domain}.{path}'{also}"
                raise ConfigError(file, at, reason)
            node = _compile_node(model, domain=self.domain, path=path, at=at, file=file)
            self.nodes[composite] = node
            self.files[composite] = file
            if "*" in composite:
                self.wildcards.append((Pattern(composite), node))

    def build(self) -> Level:
        return Level(nodes=dict(self.nodes), wildcards=tuple(self.wildcards))


def _compile_node(model: DescriptorModel, *, domain: str, path: str, at: str, file: str) -> Node:
    children = None
    if model.descriptors:
        below = _LevelBuilder(domain=domain, parent=path)
        below.add(model.descriptors, where=f"{at}.descriptors", file=file)
        children = below.build()
    return Node(
        key=model.key,
        value=model.value or None,
        composite=model.composite,
        path=path,
        stat_base_key=sanitize_stat_name(f"{domain}.{path}"),
        limits=_compile_limits(model, domain, path),
        share_threshold=model.share_threshold,
        detailed_metric=model.detailed_metric,
        value_to_metric=model.value_to_metric,
        metadata=model.metadata,
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
                quota=model.quota_mode,
                unlimited=rl.unlimited,
                replaces=frozenset(r.name for r in rl.replaces),
                tag=base_tag + (f"#{ordinal}" if ordinal else ""),
            )
        )
    return tuple(limits)
