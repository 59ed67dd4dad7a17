"""Request-body schemas enforced at the edge (issue 18, part 1).

`compile_body` turns a route's `body:` settings into a `CompiledBody` at config load;
`CompiledBody.check(body, content_type)` returns a `BodyVerdict` (413, 415, 400, 422 or
ok with the parsed value); `verdict_problem` renders a refusal as RFC 9457
`application/problem+json`. Pure: no I/O beyond reading a schema file at config load.
"""

from authz_service.body.parse import media_type_accepted, parse_body
from authz_service.body.problem import CONTENT_TYPE, json_pointer, problem_json, verdict_problem
from authz_service.body.schema import CompiledBody, compile_body, forbid_unknown_members
from authz_service.body.settings import BodySettings
from authz_service.body.verdict import BodyVerdict, Violation

__all__ = [
    "CONTENT_TYPE",
    "BodySettings",
    "BodyVerdict",
    "CompiledBody",
    "Violation",
    "compile_body",
    "forbid_unknown_members",
    "json_pointer",
    "media_type_accepted",
    "parse_body",
    "problem_json",
    "verdict_problem",
]
