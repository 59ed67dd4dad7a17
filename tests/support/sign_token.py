"""A token command for the e2e suite's external mode (`EDGEGUARD_E2E_TOKEN_COMMAND`).

Reads one JSON object on stdin (tests.support.e2e_target.TOKEN_REQUEST_FIELDS: the keyword
arguments of devstack.idp_keys.mint_token) and prints the token signed with the dev IdP
keys in `--keys`. It is the reference for a command of your own, e.g. one that runs where
the keys are (`docker compose run --rm -T tools ...`).

    python -m tests.support.sign_token --keys .dev/idp < request.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tests.support.e2e_target import TOKEN_REQUEST_FIELDS, KeyMinter, TargetError, load_idp_keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.sign_token")
    parser.add_argument("--keys", required=True, help="the dev IdP keys (or a dev dir)")
    args = parser.parse_args(argv)
    request = json.load(sys.stdin)
    if not isinstance(request, dict) or set(request) - set(TOKEN_REQUEST_FIELDS):
        print(f"stdin must be one JSON object of {TOKEN_REQUEST_FIELDS}", file=sys.stderr)
        return 2
    try:
        keys = load_idp_keys(args.keys)
    except TargetError as exc:
        print(exc, file=sys.stderr)
        return 2
    assert keys is not None
    print(KeyMinter(keys)(**request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
