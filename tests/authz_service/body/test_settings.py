"""The `body:` settings: defaults and precise errors for bad values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authz_service.body.settings import BodySettings, schema_file_path
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError

SCHEMA = {"type": "object"}


def error_for(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        validate_model(BodySettings, data, "authz.yaml")
    return caught.value


def test_defaults() -> None:
    settings = BodySettings.model_validate({"schema": SCHEMA})
    assert settings.json_schema == SCHEMA
    assert settings.content_types == ("application/json",)
    assert (settings.max_bytes, settings.max_depth) == (65536, 32)


def test_content_types_are_normalised_and_plus_json_types_allowed() -> None:
    settings = BodySettings.model_validate(
        {"schema": SCHEMA, "content_types": ["Application/JSON", "application/merge-patch+json"]}
    )
    assert settings.content_types == ("application/json", "application/merge-patch+json")


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({}, "", "exactly one of 'schema' and 'schema_file'"),
        ({"schema": SCHEMA, "schema_file": "a.json"}, "", "exactly one"),
        ({"schema": [1]}, "schema", "dictionary"),
        ({"schema": SCHEMA, "max_bytes": 0}, "max_bytes", "between 1 and 1048576"),
        ({"schema": SCHEMA, "max_bytes": 1048577}, "max_bytes", "the edge's body cap"),
        ({"schema": SCHEMA, "max_bytes": "10"}, "max_bytes", "integer"),
        ({"schema": SCHEMA, "max_bytes": True}, "max_bytes", "integer"),
        ({"schema": SCHEMA, "max_depth": 0}, "max_depth", "between 1 and 128"),
        ({"schema": SCHEMA, "max_depth": 129}, "max_depth", "between 1 and 128"),
        ({"schema": SCHEMA, "content_types": []}, "content_types", "at least one"),
        ({"schema": SCHEMA, "content_types": ["text/plain"]}, "content_types", "is not JSON"),
        (
            {"schema": SCHEMA, "content_types": ["application/json; charset=utf-8"]},
            "content_types",
            "bare type/subtype",
        ),
        ({"schema_file": " "}, "schema_file", "must not be empty"),
        ({"schema": SCHEMA, "max_size": 1}, "max_size", "unknown key"),
    ],
)
def test_bad_values_are_located_errors(data: Any, key: str, reason: str) -> None:
    error = error_for(data)
    assert error.file == "authz.yaml"
    assert error.key == (key or "<root>")
    assert reason in error.reason


def test_boundaries_are_accepted() -> None:
    settings = BodySettings.model_validate({"schema": SCHEMA, "max_bytes": 1048576, "max_depth": 1})
    assert (settings.max_bytes, settings.max_depth) == (1048576, 1)


def test_schema_file_path_is_relative_to_the_base_dir(tmp_path: Path) -> None:
    settings = BodySettings.model_validate({"schema_file": "s/user.json"})
    assert schema_file_path(settings, tmp_path) == tmp_path / "s" / "user.json"
    absolute = BodySettings.model_validate({"schema_file": "/etc/user.json"})
    assert schema_file_path(absolute, tmp_path) == Path("/etc/user.json")
    assert schema_file_path(BodySettings.model_validate({"schema": SCHEMA}), tmp_path) is None
