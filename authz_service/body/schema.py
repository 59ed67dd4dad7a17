"""Compile a route's body schema once, at config load, and validate bodies against it.

Dialect: Draft 2020-12 only. A schema without `$schema` is read as 2020-12; a schema that
names another draft is refused, because the mass-assignment default below is written in
2020-12's `unevaluatedProperties` and older drafts would evaluate it differently.

Mass assignment: every schema that describes an instance location (the root and the
subschemas under `properties`, `patternProperties`, `additionalProperties`, `items`,
`prefixItems`, `contains`, ... at any depth, `$defs` contents included) gets
`unevaluatedProperties: false` unless it says `additionalProperties` or
`unevaluatedProperties` itself. The roots of in-place applicators (`allOf`, `anyOf`,
`oneOf`, `not`, `if`/`then`/`else`, `dependentSchemas`, `$ref` targets in `$defs`) are
left alone: `unevaluatedProperties` at the location that applies them sees the members
all of them evaluate, so `allOf: [{$ref: A}, {$ref: B}]` accepts A's and B's members and
nothing else. Opt out per object with `additionalProperties: true` (or
`unevaluatedProperties: true`).

Other choices: formats are asserted, an unknown format is a config error (a typo must
not silently accept everything); `pattern` uses a linear-time regex engine (no
lookaround or backreferences, so no ReDoS from a client's string); only references
inside the document resolve, never a network or file `$ref`.

The validator is jsonschema-rs, chosen by bench/body_validation.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import jsonschema_rs

from authz_service.body.parse import parse_body
from authz_service.body.problem import json_pointer
from authz_service.body.settings import BodySettings, load_schema
from authz_service.body.verdict import SCHEMA_VIOLATION, BodyVerdict, Violation
from sidecar_runtime.errors import ConfigError

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_VIOLATIONS = 20

# Keywords whose subschemas describe another instance location (a member or an item).
_LOCATION_ONE: tuple[str, ...] = (
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "contains",
    "unevaluatedItems",
)
_LOCATION_MANY: tuple[str, ...] = ("properties", "patternProperties")
_LOCATION_LIST: tuple[str, ...] = ("prefixItems",)
# Keywords whose subschemas apply to the same instance location as their parent.
_IN_PLACE_ONE: tuple[str, ...] = ("not", "if", "then", "else")
_IN_PLACE_MANY: tuple[str, ...] = ("dependentSchemas", "$defs", "definitions")
_IN_PLACE_LIST: tuple[str, ...] = ("allOf", "anyOf", "oneOf")
_OPT_OUT_KEYS: tuple[str, ...] = ("additionalProperties", "unevaluatedProperties")


def forbid_unknown_members(schema: Any) -> Any:
    """A copy of `schema` where every object location refuses unnamed members."""
    return _rewrite(schema, at_location=True)


def _rewrite(schema: Any, *, at_location: bool) -> Any:
    if not isinstance(schema, dict):
        return schema  # a boolean schema (or a broken one the metaschema will name)
    out = dict(schema)
    for keyword in _LOCATION_ONE:
        if keyword in out:
            out[keyword] = _rewrite(out[keyword], at_location=True)
    for keyword in _IN_PLACE_ONE:
        if keyword in out:
            out[keyword] = _rewrite(out[keyword], at_location=False)
    for keywords, at in ((_LOCATION_MANY, True), (_IN_PLACE_MANY, False)):
        for keyword in keywords:
            if isinstance(out.get(keyword), dict):
                out[keyword] = {k: _rewrite(v, at_location=at) for k, v in out[keyword].items()}
    for keywords, at in ((_LOCATION_LIST, True), (_IN_PLACE_LIST, False)):
        for keyword in keywords:
            if isinstance(out.get(keyword), list):
                out[keyword] = [_rewrite(v, at_location=at) for v in out[keyword]]
    if at_location and _may_be_object(out) and not any(key in out for key in _OPT_OUT_KEYS):
        out["unevaluatedProperties"] = False
    return out


def _may_be_object(schema: dict[str, Any]) -> bool:
    # `type: string` locations need no default: keeps the enforced schema readable.
    declared = schema.get("type", "object")
    return declared == "object" or (isinstance(declared, list) and "object" in declared)


@dataclass(frozen=True, slots=True)
class CompiledBody:
    """A route's body rules, ready for the hot path."""

    content_types: frozenset[str]
    max_bytes: int
    max_depth: int
    schema: Mapping[str, Any]  # as enforced, with the mass-assignment default applied
    validator: jsonschema_rs.Validator

    def check(self, body: bytes, content_type: str | None) -> BodyVerdict:
        """Parse within the limits, then validate: the verdict for one request body."""
        verdict = parse_body(
            body,
            content_type,
            content_types=self.content_types,
            max_bytes=self.max_bytes,
            max_depth=self.max_depth,
        )
        if not verdict.ok or self.validator.is_valid(verdict.value):
            return verdict
        return BodyVerdict(SCHEMA_VIOLATION, violations=self.violations(verdict.value))

    def violations(self, value: Any) -> tuple[Violation, ...]:
        """At most MAX_VIOLATIONS violations, each a pointer and a reason of ours."""
        found = (v for err in self.validator.iter_errors(value) for v in _describe(err))
        return tuple(islice(found, MAX_VIOLATIONS))


def compile_body(settings: BodySettings, *, file: str, key: str, base_dir: Path) -> CompiledBody:
    """Compile a route's `body:` settings; a bad schema is a ConfigError naming `key`.

    `key` locates the `body:` mapping, e.g. `routes[2].body`."""
    document = load_schema(settings, base_dir=base_dir, file=file, key=key)
    where = f"{key}.schema" if settings.schema_file is None else f"{key}.schema_file"
    if not isinstance(document, dict):
        raise ConfigError(file, where, "a body schema must be a JSON object")
    dialect = document.get("$schema", DIALECT)
    if dialect not in (DIALECT, DIALECT + "#"):
        raise ConfigError(
            file, where, f"$schema must be {DIALECT} (Draft 2020-12), not {dialect!r}"
        )
    schema = forbid_unknown_members(document)
    try:
        validator = jsonschema_rs.Draft202012Validator(
            schema,
            validate_formats=True,
            ignore_unknown_formats=False,
            retriever=_refuse_retrieval,
            pattern_options=jsonschema_rs.RegexOptions(),
            email_options=jsonschema_rs.EmailOptions(allow_display_text=False),
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ConfigError(file, where, f"schema does not compile: {_first_line(exc)}") from None
    return CompiledBody(
        content_types=frozenset(settings.content_types),
        max_bytes=settings.max_bytes,
        max_depth=settings.max_depth,
        schema=schema,
        validator=validator,
    )


def _refuse_retrieval(uri: str) -> Any:
    # The edge never fetches at config load: a schema is one self-contained document.
    raise ValueError(f"external $ref {uri!r} is not allowed; use $defs in the same schema")


def _first_line(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0] if message else type(exc).__name__


# Reasons built from the keyword alone: library messages quote the value, ours never do.
_REASONS = {
    "minLength": "too short",
    "maxLength": "too long",
    "minimum": "too small",
    "exclusiveMinimum": "too small",
    "maximum": "too large",
    "exclusiveMaximum": "too large",
    "multipleOf": "not a multiple of the allowed step",
    "pattern": "does not match the required pattern",
    "enum": "must be one of the allowed values",
    "const": "must equal the required value",
    "minItems": "too few items",
    "maxItems": "too many items",
    "uniqueItems": "items must be unique",
    "minProperties": "too few properties",
    "maxProperties": "too many properties",
    "contains": "no item matches the required schema",
    "anyOf": "does not match any allowed schema",
    "oneOf": "does not match exactly one allowed schema",
    "not": "matches a forbidden schema",
    "falseSchema": "not allowed",
    "propertyNames": "a property name is not allowed",
    "unevaluatedItems": "unknown item",
    "additionalItems": "unknown item",
}


def _describe(error: jsonschema_rs.ValidationError) -> Iterator[Violation]:
    kind = error.kind
    name = kind.name
    path = error.instance_path
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.AdditionalProperties
        | jsonschema_rs.ValidationErrorKind.UnevaluatedProperties,
    ):
        for member in kind.unexpected:
            yield Violation(json_pointer([*path, member]), "unknown property")
    elif isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        yield Violation(json_pointer([*path, kind.property]), "required property missing")
    elif isinstance(kind, jsonschema_rs.ValidationErrorKind.Type):
        yield Violation(json_pointer(path), f"must be of type {' or '.join(kind.types)}")
    elif isinstance(kind, jsonschema_rs.ValidationErrorKind.Format):
        yield Violation(json_pointer(path), f"not a valid {kind.format}")
    else:
        yield Violation(
            json_pointer(path), _REASONS.get(_keyword(name), "does not match the schema")
        )


def _keyword(name: str) -> str:
    # Kind names are keywords, except oneOf's two outcomes.
    return "oneOf" if name.startswith("oneOf") else name
