"""Loading YAML config files into frozen pydantic models with located errors.

Every problem becomes a `ConfigError(file, key_path, reason)`; the services print it and
exit before serving, or log it and keep the old config on reload.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from sidecar_runtime.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_CONFIG_BYTES = 8 * 1024 * 1024


class Frozen(BaseModel):
    """Base for config models: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    loader.flatten_mapping(node)
    result: dict[Hashable, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping key is not hashable", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse one YAML document from `path`; any failure is a located ConfigError."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(p, "<file>", f"file is {size} bytes, over {MAX_CONFIG_BYTES}")
        text = p.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(p, "<file>", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(p, "<file>", f"cannot read: {exc}") from None
    return parse_yaml_text(text, p)


def parse_yaml_text(text: str, path: str | Path) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise ConfigError(path, where, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<yaml>", f"invalid YAML: {exc}") from None


def key_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `routes[3].match.path`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate_model(model: type[ModelT], data: Any, path: str | Path) -> ModelT:
    """Validate `data` into `model`, turning the first pydantic error into a ConfigError."""
    if data is None:
        data = {}
    try:
        # Models resolve relative file paths against the config file's directory.
        return model.model_validate(data, context={"base_dir": Path(path).parent})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        raise ConfigError(path, key_path(loc), _reason(err)) from None


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the chosen union member's type name into locations; drop it.
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _reason(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """A relative path resolved against the directory of the file being validated."""
    if value is None or value.is_absolute():
        return value
    base = (info.context or {}).get("base_dir")
    return Path(base) / value if base is not None else value


def load_model(model: type[ModelT], path: str | Path) -> ModelT:
    """Read and validate one YAML file."""
    return validate_model(model, read_yaml(path), path)
