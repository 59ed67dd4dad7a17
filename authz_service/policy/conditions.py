"""CEL conditions (ABAC): compiled once at load, evaluated per request, failing closed.

Variables a condition sees (all maps with string keys):

    request  method, path (decoded, no query), host (lower case, no port), headers
             (lower-case names; the caller has removed authorization and cookie), query
             (name -> list of strings), client_address, principal (mTLS peer, "" if
             none), id (request id), context (Envoy's context extensions), metadata
             (the route's metadata, namespace -> values), dynamic_metadata (the
             request's, from earlier filters), body (the parsed body, on rules with a
             `body` schema only, after it passed)
    params   path parameter name -> decoded value
    token    the verified claims, with sub, iss, roles and scopes (lists) taken from the
             Principal; an empty map when the request is unauthenticated

Compilation type-checks against those declarations, so an undeclared variable, a bad
overload (`params.id == 1`) or a result that is not `bool` is a config error. A condition
whose type is only known at run time (`token.admin`) must be written as a comparison
(`token.admin == true`): a claim of another type then compares false (CEL equality
across types is false) instead of being a truthy surprise.

At run time a condition passes only when it yields exactly `true`. `false`, an error (a
missing claim, a type mismatch) or anything else denies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from cel_expr_python import cel

REQUEST, PARAMS, TOKEN = "request", "params", "token"
MAX_DETAIL_CHARS = 200

# `var.field` (not a method call like `token.all(`) or `var['field']` / `var["field"]`;
# `request.token` is a field of request, not the variable (`.token` alone is).
_NOT_A_FIELD = r"(?<![\w)\]]\.)\b"
_FIELD_ACCESS = (
    _NOT_A_FIELD
    + r"{var}\s*(?:\.\s*([A-Za-z_]\w*)\b(?!\s*\()|\[\s*(?:'([^'\\]*)'|\"([^\"\\]*)\")\s*\])"
)


class ConditionCompileError(ValueError):
    """A condition that does not compile, or compiles to something other than bool."""


@cache
def _environment(names: frozenset[str]) -> cel.Env:
    # One environment per variable set, shared by every policy: building one costs
    # milliseconds, and compiled programs keep no per-request state.
    dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    declared = {
        REQUEST: dyn_map,
        PARAMS: cel.Type.Map(cel.Type.STRING, cel.Type.STRING),
        TOKEN: dyn_map,
    }
    return cel.NewEnv(variables={name: declared[name] for name in names})


ALL_VARIABLES = frozenset({REQUEST, PARAMS, TOKEN})


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """One compiled CEL program and what it reads (so callers skip building the rest)."""

    index: int
    source: str
    program: cel.Expression
    reads_request: bool
    reads_token: bool
    # The fields of `request` / `token` it can read; None when it may read any (e.g. it
    # iterates over the map). Building only these keeps per-request conversion small.
    request_fields: frozenset[str] | None = None
    token_fields: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ConditionResult:
    passed: bool
    error: str = ""  # set when evaluation failed rather than yielded false


def compile_condition(
    source: str, *, index: int, param_names: tuple[str, ...], allow_token: bool = True
) -> CompiledCondition:
    """Type-check `source` and record which variables it reads."""
    program = _compile(source, ALL_VARIABLES)
    reads_token = not _compiles_without(source, TOKEN)
    if reads_token and not allow_token:
        raise ConditionCompileError(
            "a public rule's condition cannot read `token` (public rules ignore credentials)"
        )
    return_type = program.return_type().name()
    if return_type != "BOOL":
        raise ConditionCompileError(
            f"condition must evaluate to bool, but its type is {return_type.lower()}"
            + (" (compare explicitly, e.g. `token.flag == true`)" if return_type == "DYN" else "")
        )
    _check_param_references(source, param_names)
    reads_request = not _compiles_without(source, REQUEST)
    return CompiledCondition(
        index=index,
        source=source,
        program=program,
        reads_request=reads_request,
        reads_token=reads_token,
        request_fields=fields_read(source, REQUEST) if reads_request else frozenset(),
        token_fields=fields_read(source, TOKEN) if reads_token else frozenset(),
    )


def fields_read(source: str, variable: str) -> frozenset[str] | None:
    """The fields of map `variable` that `source` reads by name, or None if it may read
    others (any mention of the variable that is not `var.field` or `var['field']`).

    Over-approximating is safe (a field too many is merely built); so the check is
    textual and conservative: a mention inside a string literal also counts."""
    pattern = re.compile(_FIELD_ACCESS.format(var=re.escape(variable)))
    fields = frozenset(
        next(g for g in m.groups() if g is not None) for m in pattern.finditer(source)
    )
    rest = pattern.sub(" ", source)
    return None if re.search(rf"{_NOT_A_FIELD}{re.escape(variable)}\b", rest) else fields


def _compile(source: str, names: frozenset[str]) -> cel.Expression:
    try:
        return _environment(names).compile(source)
    except RuntimeError as exc:
        raise ConditionCompileError(f"CEL does not compile: {_first_line(str(exc))}") from None


def _compiles_without(source: str, name: str) -> bool:
    try:
        _environment(ALL_VARIABLES - {name}).compile(source)
    except RuntimeError:
        return False
    return True


def _first_line(message: str) -> str:
    line = message.splitlines()[0] if message else "unknown error"
    for prefix in ("INVALID_ARGUMENT: ", "ERROR: "):
        line = line.removeprefix(prefix)
    return line


def _check_param_references(source: str, param_names: tuple[str, ...]) -> None:
    # CEL only knows `params` is a map, so `params.usr_id` would compile and then deny
    # every request at run time. Catch the typo at load instead.
    for name in sorted(fields_read(source, PARAMS) or ()):
        if name not in param_names:
            known = ", ".join(param_names) or "none"
            raise ConditionCompileError(
                f"params.{name} is not a parameter of the path template (parameters: {known})"
            )


def run_condition(condition: CompiledCondition, variables: Any) -> ConditionResult:
    """Evaluate one condition; never raises. `variables` is a cel Activation (several
    conditions on one request) or a plain dict (one condition: converting it directly
    is cheaper than building an Activation)."""
    try:
        if isinstance(variables, dict):
            value = condition.program.eval(data=variables)
        else:
            value = condition.program.eval(variables)
        result = value.value()
    except Exception as exc:  # fail closed on anything the runtime throws
        return ConditionResult(False, _clip(f"{type(exc).__name__}: {exc}"))
    if result is True:
        return _PASSED
    if result is False:
        return _FAILED
    type_name = value.type().name()
    if type_name == "ERROR":
        return ConditionResult(False, _clip(str(result)))
    return ConditionResult(False, f"condition yielded {type_name.lower()}, not bool")


_PASSED = ConditionResult(True)
_FAILED = ConditionResult(False)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def new_activation(variables: Mapping[str, Any]) -> Any:
    """A cel Activation over plain dicts/lists (build it once per request, reuse it for
    every condition of the rule)."""
    return _environment(ALL_VARIABLES).Activation(variables)
