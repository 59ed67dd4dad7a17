"""µs per body validation: jsonschema-rs against the reference validators (issue 18).

`python -m bench.body_validation [ROUNDS]` prints one row per validator and schema:
the demo schema (`PUT /api/v1/users/{user_id}`) and a larger profile schema of about 15
fields with nesting, arrays, enums, patterns and formats. Each figure is the best of
three runs of ROUNDS validations of an already-parsed body, so it is the validator's
cost alone; parsing is the same stdlib `json` for all of them.

- jsonschema-rs and jsonschema validate the schema as the edge enforces it: Draft
  2020-12 with `unevaluatedProperties: false` injected (authz_service.body.schema),
  formats asserted.
- fastjsonschema has no Draft 2020-12, so it runs the Draft-07 equivalent
  (`additionalProperties: false` written out); jsonschema-rs runs that too, for a
  like-for-like row.
- valid: the hot path's yes/no check; invalid: collecting every violation (fastjsonschema
  can only report the first, so its figure is the cheaper one).

`measure_check` times what the sidecar runs per body instead: `CompiledBody.check`, the
bytes parsed within the limits (size, depth, duplicate names, UTF-8, finite numbers,
content type), then validated, and for an invalid body its violations described.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs

from authz_service.body import BodySettings, CompiledBody, compile_body
from authz_service.body.schema import forbid_unknown_members

DEMO: dict[str, Any] = {
    "type": "object",
    "required": ["display_name", "email"],
    "properties": {
        "display_name": {"type": "string", "minLength": 3, "maxLength": 50},
        "email": {"type": "string", "format": "email"},
    },
}
DEMO_VALID = {"display_name": "Ada Lovelace", "email": "ada@example.com"}
DEMO_INVALID = {"display_name": "A", "email": "not-an-email", "roles": ["admin"]}

_PHONE = {
    "type": "object",
    "required": ["kind", "number"],
    "properties": {
        "kind": {"enum": ["mobile", "home", "work"]},
        "number": {"type": "string", "pattern": "^\\+[1-9][0-9]{6,14}$"},
    },
}
PROFILE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "display_name", "email", "address", "status"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        },
        "display_name": {"type": "string", "minLength": 3, "maxLength": 50},
        "email": {"type": "string", "format": "email"},
        "age": {"type": "integer", "minimum": 13, "maximum": 150},
        "status": {"enum": ["active", "suspended", "pending"]},
        "locale": {"type": "string", "pattern": "^[a-z]{2}(-[A-Z]{2})?$"},
        "website": {"type": "string", "format": "uri", "maxLength": 200},
        "born": {"type": "string", "format": "date"},
        "bio": {"type": "string", "maxLength": 500},
        "score": {"type": "number", "minimum": 0, "exclusiveMaximum": 100},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 20},
            "maxItems": 10,
            "uniqueItems": True,
        },
        "phones": {"type": "array", "items": _PHONE, "maxItems": 5},
        "address": {
            "type": "object",
            "required": ["street", "city", "country"],
            "properties": {
                "street": {"type": "string", "maxLength": 100},
                "city": {"type": "string", "maxLength": 60},
                "postcode": {"type": "string", "pattern": "^[A-Z0-9 -]{3,10}$"},
                "country": {"enum": ["DE", "FR", "GB", "NL", "US"]},
            },
        },
        "preferences": {
            "type": "object",
            "properties": {
                "newsletter": {"type": "boolean"},
                "theme": {"enum": ["light", "dark", "system"]},
            },
        },
        "consented_at": {"type": "string", "format": "date-time"},
    },
}
PROFILE_VALID = {
    "id": "2f1e7c4a-9b3d-4e8f-a1c2-0d9e8f7a6b5c",
    "display_name": "Ada Lovelace",
    "email": "ada@example.com",
    "age": 36,
    "status": "active",
    "locale": "en-GB",
    "website": "https://example.com/ada",
    "born": "1815-12-10",
    "bio": "Wrote the first published program for the Analytical Engine.",
    "score": 99.5,
    "tags": ["math", "engines", "poetry"],
    "phones": [
        {"kind": "mobile", "number": "+441234567890"},
        {"kind": "home", "number": "+4412345678"},
    ],
    "address": {
        "street": "12 St James's Square",
        "city": "London",
        "postcode": "SW1Y 4JH",
        "country": "GB",
    },
    "preferences": {"newsletter": False, "theme": "dark"},
    "consented_at": "2026-12-05T10:00:00Z",
}
PROFILE_INVALID = {
    **PROFILE_VALID,
    "age": 7,
    "status": "admin",
    "phones": [{"kind": "pager", "number": "12"}],
    "address": {"street": "x", "city": "London", "country": "GB", "owner": "ada"},
    "roles": ["admin"],
}

SCHEMAS = {
    "demo": (DEMO, DEMO_VALID, DEMO_INVALID),
    "profile": (PROFILE, PROFILE_VALID, PROFILE_INVALID),
}


def draft7_closed(schema: Any) -> Any:
    """The Draft-07 equivalent of the enforced schema: `additionalProperties: false` on
    every object schema (no composition here, so the two mean the same)."""
    out = copy.deepcopy(schema)
    pending = [out]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("type") == "object":
                node.setdefault("additionalProperties", False)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return out


Check = Callable[[Any], object]


def _candidates(schema: dict[str, Any]) -> dict[str, tuple[Check, Check]]:
    """name -> (yes/no check, collect every error), each proven to agree below."""
    enforced = forbid_unknown_members(schema)
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", **draft7_closed(schema)}
    rs = jsonschema_rs.Draft202012Validator(enforced, validate_formats=True)
    rs7 = jsonschema_rs.Draft7Validator(draft7, validate_formats=True)
    ref = jsonschema.Draft202012Validator(
        enforced, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    fast = fastjsonschema.compile(draft7)
    return {
        "jsonschema-rs 2020-12": (rs.is_valid, lambda v: list(rs.iter_errors(v))),
        "jsonschema-rs draft-07": (rs7.is_valid, lambda v: list(rs7.iter_errors(v))),
        "jsonschema 2020-12": (ref.is_valid, lambda v: list(ref.iter_errors(v))),
        "fastjsonschema draft-07": (
            lambda v: not _fast_errors(fast, v),
            lambda v: _fast_errors(fast, v),
        ),
    }


def _fast_errors(validate: Callable[[Any], object], value: Any) -> list[Exception]:
    # fastjsonschema raises at the first error: that one is all it can report.
    try:
        validate(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return [exc]
    return []


def _us_per_call(check: Check, value: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            check(value)
        best = min(best, time.perf_counter() - started)
    return best / rounds * 1e6


def measure(rounds: int) -> list[dict[str, Any]]:
    """One row per validator and schema: µs per validation of a valid and an invalid body."""
    rows = []
    for schema_name, (schema, valid, invalid) in SCHEMAS.items():
        for name, (is_valid, collect) in _candidates(schema).items():
            # A validator that disagrees with the others is not measured as if it were right.
            if not is_valid(valid) or is_valid(invalid) or not collect(invalid):
                raise AssertionError(f"{name} misjudges the {schema_name} bodies")
            rows.append(
                {
                    "validator": name,
                    "schema": schema_name,
                    "valid_us": round(_us_per_call(is_valid, valid, rounds), 2),
                    "invalid_us": round(_us_per_call(collect, invalid, rounds), 2),
                }
            )
    return rows


CHECK_NAME = "CompiledBody.check (parse + validate)"
JSON_TYPE = "application/json"


def compiled(schema: dict[str, Any]) -> CompiledBody:
    """`schema` compiled as a route's `body:` is at config load (defaults otherwise)."""
    settings = BodySettings.model_validate({"schema": schema})
    return compile_body(settings, file="<bench>", key="body", base_dir=Path.cwd())


def measure_check(rounds: int) -> list[dict[str, Any]]:
    """One row per schema: µs per `CompiledBody.check` of a valid and an invalid body, as
    the bytes a client sends (compact JSON)."""
    rows = []
    for schema_name, (schema, valid, invalid) in SCHEMAS.items():
        body = compiled(schema)

        def check(raw: bytes, body: CompiledBody = body) -> object:
            return body.check(raw, JSON_TYPE)

        good, bad = (json.dumps(v, separators=(",", ":")).encode() for v in (valid, invalid))
        if not body.check(good, JSON_TYPE).ok or not body.check(bad, JSON_TYPE).violations:
            raise AssertionError(f"CompiledBody.check misjudges the {schema_name} bodies")
        rows.append(
            {
                "validator": CHECK_NAME,
                "schema": schema_name,
                "valid_bytes": len(good),
                "invalid_bytes": len(bad),
                "valid_us": round(_us_per_call(check, good, rounds), 2),
                "invalid_us": round(_us_per_call(check, bad, rounds), 2),
            }
        )
    return rows


def main(argv: list[str]) -> None:
    rounds = int(argv[0]) if argv else 5000
    print(f"{'validator':<38}{'schema':<10}{'valid µs':>10}{'invalid µs':>12}")
    for row in [*measure(rounds), *measure_check(rounds)]:
        print(
            f"{row['validator']:<38}{row['schema']:<10}"
            f"{row['valid_us']:>10.2f}{row['invalid_us']:>12.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
