"""`python -m devstack run | token | init | render-configs | kubernetes-secrets | ...`.

run            the whole local stack in the foreground (what `make run` calls);
               --stage0 global: the per-address limit before authentication in the
               rate-limit sidecar (three calls per request) instead of in Envoy (two);
               --authz-config FILE: another policy (Envoy's body routes follow it)
token          mint a dev access token, e.g.
               token --sub alice --scope "users:read" --roles admin --alg EdDSA
render-configs the generated deployment files: deploy/compose/ and deploy/kubernetes/
               (compose-configs and kubernetes-manifests: one of the two)
kubernetes-secrets
               the Kubernetes dev overlay's Secrets from --dev-dir, on stdout or --out
with-secret-env NAME=FILE... -- COMMAND...
               run COMMAND with each NAME set to FILE's first line (docker-compose
               hands the sidecars the Redis password so)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from devstack.configs import AUTHZ_DEMO, compose_files, write_files
from devstack.envoy_config import STAGE0_PROFILES
from devstack.http_thread import BackgroundHttpServer
from devstack.idp_keys import ED25519_ALGS, ensure_idp_keys, mint_token
from devstack.idp_server import IdpServer
from devstack.kubernetes import kubernetes_files
from devstack.kubernetes_secrets import render_secrets, write_secrets
from devstack.peppers import ensure_pepper
from devstack.pki import ensure_pki
from devstack.redis_auth import ensure_redis_password, exec_with_secrets, parse_assignments
from devstack.stack import REPO, Ports, Stack, StackOptions, env_options
from devstack.upstream import DemoUpstream


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole stack in the foreground")
    run.add_argument("--dev-dir", type=Path, default=REPO / ".dev")
    run.add_argument("--port-offset", type=int, default=0, help="shift every port by N")
    run.add_argument(
        "--stage0",
        choices=STAGE0_PROFILES,
        default="local",
        help="per-address limit before authn: in Envoy (local, default) or the sidecar (global)",
    )
    run.add_argument(
        "--authz-config",
        type=Path,
        default=AUTHZ_DEMO,
        help="the authz config to run (its body rules become Envoy's body routes)",
    )
    init = sub.add_parser("init", help="make the dev PKI, IdP keys and API-key pepper")
    init.add_argument("--dev-dir", type=Path, default=REPO / ".dev")
    idp = sub.add_parser("idp", help="serve the dev IdP")
    idp.add_argument("--dev-dir", type=Path, default=REPO / ".dev")
    idp.add_argument("--issuer", default=f"http://127.0.0.1:{Ports().idp}")
    idp.add_argument("--listen", default=f"127.0.0.1:{Ports().idp}")
    upstream = sub.add_parser("upstream", help="serve the demo API")
    upstream.add_argument("--listen", default=f"127.0.0.1:{Ports().upstream}")
    sub.add_parser("compose-configs", help="regenerate deploy/compose/*.yaml")
    sub.add_parser("kubernetes-manifests", help="regenerate deploy/kubernetes/")
    sub.add_parser("render-configs", help="regenerate deploy/compose/ and deploy/kubernetes/")
    secrets = sub.add_parser(
        "kubernetes-secrets", help="the Kubernetes dev overlay's Secrets (never commit them)"
    )
    secrets.add_argument("--dev-dir", type=Path, default=REPO / ".dev")
    secrets.add_argument("--out", type=Path, help="write here (0600) instead of stdout")
    secret_env = sub.add_parser(
        "with-secret-env", help="run a command with secret files as environment variables"
    )
    secret_env.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="NAME=FILE... -- COMMAND ARGS..."
    )
    token = sub.add_parser("token", help="mint a dev access token (printed on stdout)")
    token.add_argument("--sub", required=True, help="subject (user id in the demo paths)")
    token.add_argument("--scope", default="", help='space-separated, e.g. "users:read"')
    token.add_argument("--roles", default="", help="comma-separated, e.g. admin,support")
    token.add_argument("--alg", default="RS256", choices=["RS256", *ED25519_ALGS])
    token.add_argument("--ttl", type=int, default=300, help="seconds (negative: expired)")
    token.add_argument("--aud", default="api://demo")
    token.add_argument("--issuer", default=f"http://127.0.0.1:{Ports().idp}")
    token.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE")
    token.add_argument("--dev-dir", type=Path, default=REPO / ".dev")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command == "init":
        pki = ensure_pki(args.dev_dir / "pki")
        keys = ensure_idp_keys(args.dev_dir / "idp")
        pepper = ensure_pepper(args.dev_dir)
        redis = ensure_redis_password(args.dev_dir)
        print(f"dev PKI in {pki.root}, IdP keys in {keys.root}, API-key pepper {pepper}")
        print(f"Redis password {redis}")
        return 0
    if args.command == "idp":
        host, _, port = args.listen.rpartition(":")
        keys = ensure_idp_keys(args.dev_dir / "idp")
        return _serve_forever(IdpServer(keys, issuer=args.issuer, host=host, port=int(port)))
    if args.command == "upstream":
        host, _, port = args.listen.rpartition(":")
        return _serve_forever(DemoUpstream(host=host, port=int(port)))
    if args.command in _RENDERERS:
        for path in write_files(_RENDERERS[args.command]()):
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    if args.command == "kubernetes-secrets":
        return _kubernetes_secrets(args.dev_dir, args.out)
    if args.command == "with-secret-env":
        return _with_secret_env(args.words)
    options = env_options(
        dev_dir=args.dev_dir,
        port_offset=args.port_offset,
        stage0=args.stage0,
        authz_config=args.authz_config.resolve(),
    )
    return _run(options)


_RENDERERS: dict[str, Callable[[], dict[Path, str]]] = {
    "compose-configs": compose_files,
    "kubernetes-manifests": kubernetes_files,
    "render-configs": lambda: {**compose_files(), **kubernetes_files()},
}


def _kubernetes_secrets(dev_dir: Path, out: Path | None) -> int:
    if out is None:
        sys.stdout.write(render_secrets(dev_dir))
    else:
        print(f"wrote {write_secrets(dev_dir, out)} (private keys: never commit it)")
    return 0


def _with_secret_env(words: list[str]) -> int:
    if "--" not in words or words[-1] == "--":
        print("with-secret-env: NAME=FILE... -- COMMAND ARGS...", file=sys.stderr)
        return 2
    split = words.index("--")
    try:
        exec_with_secrets(parse_assignments(words[:split]), words[split + 1 :])
    except (ValueError, OSError) as exc:
        print(f"with-secret-env: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: exec replaced this process


def _serve_forever(server: BackgroundHttpServer) -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    print(f"serving on port {server.start()}", flush=True)
    stopping.wait()
    server.stop()
    return 0


def _token(args: argparse.Namespace) -> int:
    keys = ensure_idp_keys(args.dev_dir / "idp")
    extra = dict(c.split("=", 1) for c in args.claim)
    print(
        mint_token(
            keys,
            issuer=args.issuer,
            audience=args.aud,
            subject=args.sub,
            alg=args.alg,
            scope=args.scope or None,
            roles=[r for r in args.roles.split(",") if r],
            ttl=args.ttl,
            extra=extra,
        )
    )
    return 0


def _run(options: StackOptions) -> int:
    stack = Stack(options)
    stopping = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(f"starting the stack (logs in {stack.log_dir}) ...", flush=True)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 1
    print(_banner(stack), flush=True)
    try:
        while not stopping.wait(0.5):
            dead = [name for name, proc in stack._procs if proc.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited; stopping the stack", file=sys.stderr)
                return 1
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0


def _stage0_note(stage0: str) -> str:
    if stage0 == "global":
        return "stage0 global: per-address limit in the rate-limit sidecar (3 calls per request)"
    return "stage0 local: per-address limit in Envoy (2 sidecar calls per request)"


def _banner(stack: Stack) -> str:
    p = stack.options.ports
    dev = os.path.relpath(stack.options.dev_dir)
    tok = ".venv/bin/python -m devstack token"
    if stack.options.dev_dir != REPO / ".dev" or p != Ports():
        tok += f" --dev-dir {dev} --issuer {stack.issuer}"
    api = f"https://localhost:{p.envoy}/api/v1"
    mtls = f"-cacert $CA -cert {dev}/pki/client.pem -key {dev}/pki/client-key.pem"
    return f"""
edgeguard is up: Envoy https://127.0.0.1:{p.envoy}   (store: {stack.store_note})
  {_stage0_note(stack.options.stage0)}
  authz_service :{p.authz}  ratelimit_service :{p.ratelimit}  demo API :{p.upstream}
  demo gRPC :{p.grpc_upstream} (demo.v1.Greeter, through Envoy like the API)
  dev IdP http://127.0.0.1:{p.idp}  admin http://127.0.0.1:{p.admin}  logs {dev}/logs/
  Ctrl-C stops everything.

Try:
  CA={dev}/pki/ca.pem
  curl --cacert $CA {api}/public/ping
  curl --cacert $CA -i {api}/users/alice                        # 401
  TOKEN=$({tok} --sub alice --scope users:read --alg EdDSA)
  curl --cacert $CA -H "Authorization: Bearer $TOKEN" {api}/users/alice
  curl --cacert $CA -i -H "Authorization: Bearer $TOKEN" {api}/users/bob    # 403 (IDOR)
  ADMIN=$({tok} --sub root --scope users:read --roles admin)
  curl --cacert $CA -H "Authorization: Bearer $ADMIN" {api}/admin/stats
  HELLO=$({tok} --sub carol --scope greeter:read)
  GRPC="-cacert $CA -import-path protos -proto demo/v1/greeter.proto"
  .venv/bin/grpcurl $GRPC -H "authorization: Bearer $HELLO" -d '{{"name":"carol"}}' \
    localhost:{p.envoy} demo.v1.Greeter/SayHello
  .venv/bin/grpcurl $GRPC -H "authorization: Bearer $HELLO" localhost:{p.envoy} \
    demo.v1.Greeter/SayGoodbye                                 # PermissionDenied
  .venv/bin/grpcurl {mtls} 127.0.0.1:{p.authz} grpc.health.v1.Health/Check
  .venv/bin/grpcurl {mtls} 127.0.0.1:{p.ratelimit} list
"""


if __name__ == "__main__":
    sys.exit(main())
