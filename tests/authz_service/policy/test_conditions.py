from __future__ import annotations

from typing import Any

import pytest

from authz_service.policy.conditions import (
    CompiledCondition,
    ConditionCompileError,
    _environment,
    compile_condition,
    fields_read,
    new_activation,
    run_condition,
)

EMPTY: dict[str, Any] = {"request": {}, "params": {}, "token": {}}


def test_records_which_variables_a_condition_reads() -> None:
    params_only = compile_condition("params.id == 'x'", index=0, param_names=("id",))
    assert not params_only.reads_request
    assert not params_only.reads_token
    both = compile_condition(
        "request.method == 'GET' && token.sub == params.id", index=3, param_names=("id",)
    )
    assert (both.index, both.reads_request, both.reads_token) == (3, True, True)


def test_params_in_a_string_literal_are_not_mistaken_for_references() -> None:
    compiled = compile_condition("'params' == 'params'", index=0, param_names=())
    assert not compiled.reads_token


def test_public_conditions_may_read_request_and_params() -> None:
    compile_condition(
        "request.method == 'GET' && params.id != ''",
        index=0,
        param_names=("id",),
        allow_token=False,
    )
    with pytest.raises(ConditionCompileError, match="cannot read `token`"):
        compile_condition("token.sub == ''", index=0, param_names=(), allow_token=False)


def test_run_passes_only_on_exact_true() -> None:
    activation = new_activation({**EMPTY, "params": {"id": "a"}})
    true = compile_condition("params.id == 'a'", index=0, param_names=("id",))
    false = compile_condition("params.id == 'b'", index=0, param_names=("id",))
    assert run_condition(true, activation).passed
    result = run_condition(false, activation)
    assert (result.passed, result.error) == (False, "")


def test_run_reports_a_non_bool_result_as_an_error() -> None:
    # Compilation refuses non-bool conditions; this guards the runtime anyway.
    program = _environment(frozenset({"request", "params", "token"})).compile("1 + 1")
    condition = CompiledCondition(0, "1 + 1", program, reads_request=False, reads_token=False)
    result = run_condition(condition, new_activation(EMPTY))
    assert (result.passed, result.error) == (False, "condition yielded int, not bool")


def test_run_never_raises() -> None:
    condition = compile_condition("token.sub == 'a'", index=0, param_names=())
    result = run_condition(condition, object())  # not an Activation at all
    assert not result.passed
    assert result.error


def test_long_errors_are_clipped() -> None:
    condition = compile_condition("token['" + "k" * 400 + "'] == 'a'", index=0, param_names=())
    result = run_condition(condition, new_activation(EMPTY))
    assert not result.passed
    assert len(result.error) == 200
    assert result.error.endswith("...")


def test_param_references_are_checked_but_methods_are_not_params() -> None:
    compile_condition(
        "params.size() == 1 && request.params.x == 1 && params.id != ''",
        index=0,
        param_names=("id",),
    )
    with pytest.raises(ConditionCompileError, match=r"params\.ids is not a parameter"):
        compile_condition("params.ids == ''", index=0, param_names=("id",))


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("params.user_id == token.sub || 'admin' in token.roles", {"sub", "roles"}),
        ("has(token.act) && token['x-y'] == 1 && token[\"z\"] == 2", {"act", "x-y", "z"}),
        ("token . sub.startsWith('a')", {"sub"}),
        ("request.token.x == 1", set()),  # a field named token, not the variable
        ("token.all(k, k != 'x')", None),  # iterates over the map
        ("size(token) > 0", None),
        ("'sub' in token", None),
        ("[token][0].sub == 'a'", None),
        (".token.sub == 'a'", {"sub"}),  # leading dot: the root-scoped variable
        ("token[r'x'] == 1", None),
    ],
)
def test_fields_read_over_approximates(source: str, fields: set[str] | None) -> None:
    expected = None if fields is None else frozenset(fields)
    assert fields_read(source, "token") == expected
