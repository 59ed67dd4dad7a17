"""The schema compiler: config errors, the mass-assignment default, violations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_service.body.schema import (
    MAX_VIOLATIONS,
    CompiledBody,
    compile_body,
    forbid_unknown_members,
)
from authz_service.body.settings import BodySettings
from sidecar_runtime.errors import ConfigError

KEY = "routes[2].body"
DEMO: dict[str, Any] = {
    "type": "object",
    "required": ["display_name", "email"],
    "properties": {
        "display_name": {"type": "string", "minLength": 3, "maxLength": 50},
        "email": {"type": "string", "format": "email"},
    },
}


def compiled(schema: Any, **options: Any) -> CompiledBody:
    settings = BodySettings.model_validate({"schema": schema, **options})
    return compile_body(settings, file="authz.yaml", key=KEY, base_dir=Path("."))


def problems(body: CompiledBody, value: Any) -> list[tuple[str, str]]:
    verdict = body.check(json.dumps(value).encode(), "application/json")
    return [(v.pointer, v.reason) for v in verdict.violations]


def accepts(body: CompiledBody, value: Any) -> bool:
    return body.check(json.dumps(value).encode(), "application/json").ok


# --- config errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nope"}, "schema does not compile"),
        ({"minLength": -1}, "schema does not compile"),
        ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
        ({"$ref": "https://schemas.example.com/user.json"}, "user.json"),
        ({"$ref": "user.json"}, "user.json"),
        ({"type": "string", "format": "emial"}, "emial"),
        ({"type": "string", "pattern": "(?=lookahead)"}, "schema does not compile"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "Draft 2020-12"),
    ],
)
def test_a_schema_that_does_not_compile_names_file_and_key(schema: Any, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compiled(schema)
    assert caught.value.file == "authz.yaml"
    assert caught.value.key == "routes[2].body.schema"
    assert reason in caught.value.reason
    assert str(caught.value).startswith("authz.yaml: routes[2].body.schema: ")


def test_the_2020_12_dialect_may_be_named() -> None:
    body = compiled({"$schema": "https://json-schema.org/draft/2020-12/schema", **DEMO})
    assert accepts(body, {"display_name": "Ada", "email": "ada@example.com"})


def test_a_schema_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "user.json").write_text(json.dumps(DEMO))
    settings = BodySettings.model_validate({"schema_file": "schemas/user.json"})
    body = compile_body(settings, file="authz.yaml", key=KEY, base_dir=tmp_path)
    assert accepts(body, {"display_name": "Ada", "email": "ada@example.com"})


def test_a_yaml_schema_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "user.yaml").write_text("type: object\nproperties: {a: {type: string}}\n")
    settings = BodySettings.model_validate({"schema_file": "user.yaml"})
    body = compile_body(settings, file="authz.yaml", key=KEY, base_dir=tmp_path)
    assert accepts(body, {"a": "x"})
    assert not accepts(body, {"b": "x"})


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.json", None, "cannot read"),
        ("dup.json", '{"type": "object", "type": "string"}', "not valid JSON"),
        ("bad.json", "{", "not valid JSON"),
        ("list.json", "[]", "must be a JSON object"),
        ("bad.yaml", "a: [", "invalid YAML"),
        ("invalid.json", '{"type": 5}', "schema does not compile"),
    ],
)
def test_schema_file_errors_name_the_schema_file_key(
    tmp_path: Path, name: str, content: str | None, reason: str
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    settings = BodySettings.model_validate({"schema_file": name})
    with pytest.raises(ConfigError) as caught:
        compile_body(settings, file="authz.yaml", key=KEY, base_dir=tmp_path)
    assert caught.value.key == "routes[2].body.schema_file"
    assert reason in caught.value.reason


# --- mass assignment ---------------------------------------------------------------


def test_the_demo_refuses_a_mass_assignment_attempt() -> None:
    body = compiled(DEMO)
    value = {"display_name": "Ada", "email": "ada@example.com", "roles": ["admin"]}
    assert problems(body, value) == [("/roles", "unknown property")]


def test_allof_accepts_both_branches_members_and_refuses_a_third() -> None:
    body = compiled(
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}},
                {"type": "object", "properties": {"b": {"type": "integer"}}},
            ]
        }
    )
    assert accepts(body, {"a": "x", "b": 1})
    assert problems(body, {"a": "x", "b": 1, "c": True}) == [("/c", "unknown property")]


def test_allof_of_refs_to_defs_composes() -> None:
    body = compiled(
        {
            "$defs": {
                "Named": {"type": "object", "properties": {"name": {"type": "string"}}},
                "Aged": {"type": "object", "properties": {"age": {"type": "integer"}}},
            },
            "allOf": [{"$ref": "#/$defs/Named"}, {"$ref": "#/$defs/Aged"}],
        }
    )
    assert accepts(body, {"name": "x", "age": 3})
    assert problems(body, {"name": "x", "admin": True}) == [("/admin", "unknown property")]


def test_anyof_and_if_then_members_count_as_named() -> None:
    body = compiled(
        {
            "type": "object",
            "properties": {"kind": {"enum": ["a", "b"]}},
            "if": {"properties": {"kind": {"const": "a"}}},
            "then": {"properties": {"a_only": {"type": "string"}}},
            "anyOf": [{"properties": {"x": {}}}, {"properties": {"y": {}}}],
        }
    )
    assert accepts(body, {"kind": "a", "a_only": "1", "x": 1})
    assert problems(body, {"kind": "b", "a_only": "1", "x": 1}) == [("/a_only", "unknown property")]


def test_nested_objects_and_arrays_of_objects_refuse_unknown_members() -> None:
    body = compiled(
        {
            "type": "object",
            "properties": {
                "address": {"type": "object", "properties": {"city": {"type": "string"}}},
                "phones": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"n": {"type": "string"}}},
                },
                "pair": {"type": "array", "prefixItems": [{"type": "object"}]},
            },
        }
    )
    value = {
        "address": {"city": "x", "owner": "me"},
        "phones": [{"n": "1"}, {"n": "2", "primary": True}],
        "pair": [{"z": 1}],
    }
    assert sorted(problems(body, value)) == [
        ("/address/owner", "unknown property"),
        ("/pair/0/z", "unknown property"),
        ("/phones/1/primary", "unknown property"),
    ]


def test_ref_to_defs_at_a_member_location_is_closed() -> None:
    body = compiled(
        {
            "type": "object",
            "properties": {"owner": {"$ref": "#/$defs/User"}},
            "$defs": {"User": {"type": "object", "properties": {"id": {"type": "string"}}}},
        }
    )
    assert accepts(body, {"owner": {"id": "u1"}})
    assert problems(body, {"owner": {"id": "u1", "role": "admin"}}) == [
        ("/owner/role", "unknown property")
    ]


@pytest.mark.parametrize("opt_out", ["additionalProperties", "unevaluatedProperties"])
def test_an_object_that_says_true_opts_out(opt_out: str) -> None:
    body = compiled(
        {
            "type": "object",
            "properties": {"meta": {"type": "object", opt_out: True}},
        }
    )
    assert accepts(body, {"meta": {"anything": 1}})
    assert not accepts(body, {"meta": {}, "other": 1})


def test_injection_leaves_branches_and_explicit_choices_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "allOf": [{"properties": {"a": {"type": "object"}}}],
        "$defs": {"D": {"type": "object", "properties": {"x": {}}}},
    }
    out = forbid_unknown_members(schema)
    assert out["unevaluatedProperties"] is False
    assert "unevaluatedProperties" not in out["properties"]["name"]  # not an object
    assert "unevaluatedProperties" not in out["properties"]["tags"]
    assert "unevaluatedProperties" not in out["allOf"][0]
    assert out["allOf"][0]["properties"]["a"]["unevaluatedProperties"] is False
    assert "unevaluatedProperties" not in out["$defs"]["D"]
    assert out["$defs"]["D"]["properties"]["x"]["unevaluatedProperties"] is False
    assert "unevaluatedProperties" not in schema  # the input is not modified


# --- violations --------------------------------------------------------------------


def test_violations_name_pointers_and_short_reasons() -> None:
    body = compiled(DEMO)
    assert problems(body, {"display_name": "Al", "email": "SECRET-not-an-email"}) == [
        ("/display_name", "too short"),
        ("/email", "not a valid email"),
    ]
    assert problems(body, {"display_name": "Ada"}) == [("/email", "required property missing")]
    assert problems(body, {"display_name": 7, "email": "a@example.com"}) == [
        ("/display_name", "must be of type string")
    ]
    assert problems(body, []) == [("", "must be of type object")]


def test_pointer_tokens_escape_tilde_and_slash() -> None:
    body = compiled({"type": "object", "properties": {"a/b~c": {"type": "integer"}}})
    assert problems(body, {"a/b~c": "x", "~/": 1}) == [
        ("/a~1b~0c", "must be of type integer"),
        ("/~0~1", "unknown property"),
    ]


def test_violations_are_capped() -> None:
    body = compiled({"type": "object"})
    value = {f"k{i}": i for i in range(100)}
    assert len(problems(body, value)) == MAX_VIOLATIONS


def test_the_verdict_is_422_with_the_parsed_value_on_success() -> None:
    body = compiled(DEMO)
    good = body.check(b'{"display_name": "Ada", "email": "ada@example.com"}', "application/json")
    assert (good.status, good.value["display_name"]) == (200, "Ada")
    bad = body.check(b'{"display_name": "Ada"}', "application/json")
    assert (bad.status, bad.reason) == (422, "schema_violation")


def test_parse_limits_come_from_the_settings() -> None:
    body = compiled(DEMO, max_bytes=10, max_depth=1)
    assert body.check(b"{" * 11, "application/json").status == 413
    assert body.check(b'{"a":[]}', "application/json").status == 400
    assert body.check(b"{}", "text/plain").status == 415
