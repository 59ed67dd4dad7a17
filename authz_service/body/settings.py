"""The `body:` key of a route, as a validated pydantic model, and its schema source.

    body:
      schema:                        # inline JSON Schema (Draft 2020-12) ...
        type: object
        required: [display_name, email]
        properties:
          display_name: {type: string, minLength: 3, maxLength: 50}
          email: {type: string, format: email}
      # schema_file: schemas/user.json   # ... or a file, relative to the config file
      content_types: [application/json]  # default; "+json" types may be listed too
      max_bytes: 65536                   # default; at most 1 MiB, the edge's body cap
      max_depth: 32                      # default; nesting of arrays and objects

Every object in the schema refuses members it does not name unless it says
`additionalProperties: true` or `unevaluatedProperties: true` (see `schema.py`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from authz_service.body.parse import loads_strict
from sidecar_runtime.config import Frozen, read_yaml
from sidecar_runtime.errors import ConfigError

# Envoy buffers at most this much for ext_authz (`max_request_bytes` in the rendered
# config); a larger limit here could never be reached.
EDGE_BODY_CAP = 1024 * 1024
# json.loads recurses once per level; staying far below the interpreter's recursion limit
# keeps parsing and validation safe even when called from deep stacks.
MAX_DEPTH_CAP = 128
_TCHARS = r"[!#$%&'*+.^_`|~0-9a-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}")


def _check_content_type(value: str) -> str:
    lowered = value.strip().lower()
    if not _MEDIA_TYPE.fullmatch(lowered):
        raise ValueError(
            f"content type {value!r} must be a bare type/subtype such as application/json "
            "(no parameters: charset is always UTF-8)"
        )
    if lowered != "application/json" and not lowered.endswith("+json"):
        raise ValueError(
            f"content type {value!r} is not JSON: use application/json or a '+json' type "
            "(RFC 6839 §3.1)"
        )
    return lowered


class BodySettings(Frozen):
    """A route's body rules. `schema` is the YAML key; the field avoids BaseModel.schema."""

    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: StrictStr | None = None
    content_types: tuple[StrictStr, ...] = ("application/json",)
    max_bytes: StrictInt = 65536
    max_depth: StrictInt = 32

    @field_validator("content_types")
    @classmethod
    def _content_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("content_types must list at least one media type")
        return tuple(dict.fromkeys(_check_content_type(v) for v in value))

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, value: int) -> int:
        if not 0 < value <= EDGE_BODY_CAP:
            raise ValueError(
                f"max_bytes must be between 1 and {EDGE_BODY_CAP} (1 MiB, the edge's body cap)"
            )
        return value

    @field_validator("max_depth")
    @classmethod
    def _max_depth(cls, value: int) -> int:
        if not 0 < value <= MAX_DEPTH_CAP:
            raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_CAP}")
        return value

    @field_validator("schema_file")
    @classmethod
    def _schema_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("schema_file must not be empty")
        return value

    @model_validator(mode="after")
    def _one_schema_source(self) -> BodySettings:
        if (self.json_schema is None) == (self.schema_file is None):
            raise ValueError("body needs exactly one of 'schema' and 'schema_file'")
        return self


def schema_file_path(settings: BodySettings, base_dir: Path) -> Path | None:
    """The schema file, a relative path taken from the config file's directory."""
    if settings.schema_file is None:
        return None
    path = Path(settings.schema_file)
    return path if path.is_absolute() else base_dir / path


def load_schema(settings: BodySettings, *, base_dir: Path, file: str, key: str) -> Any:
    """The route's schema document: inline, or read from `schema_file` (JSON or YAML).

    Config-load I/O, kept here so `schema.py` stays pure. Errors name `file` and
    `<key>.schema_file`."""
    path = schema_file_path(settings, base_dir)
    if path is None:
        return settings.json_schema
    where = f"{key}.schema_file"
    if path.suffix.lower() != ".json":
        try:
            return read_yaml(path)
        except ConfigError as exc:
            raise ConfigError(file, where, f"{path}: {exc.key}: {exc.reason}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, where, f"cannot read {path}: {exc}") from None
    try:
        return loads_strict(text)
    except ValueError as exc:
        raise ConfigError(file, where, f"{path} is not valid JSON: {exc}") from None
