"""`python -m devstack kubernetes-secrets --dev-dir .dev`: the dev overlay's Secrets, made
from the dev PKI, IdP keys, API-key pepper and Redis password under the dev dir (each
made first if missing), printed as manifests or written 0600 to a path of your choice.
They are never rendered into deploy/ and never committed.

The TLS Secrets have the shape cert-manager writes (type kubernetes.io/tls with tls.crt,
tls.key and ca.crt), so the production overlay's Certificates replace them with no
change to the Deployment.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from devstack.envoy_config import dump_yaml
from devstack.idp_keys import ensure_idp_keys
from devstack.kubernetes_objects import (
    CLIENT_TLS,
    DEV_IDP_SECRET,
    LISTENER_TLS,
    PEPPER_SECRET,
    REDIS_SECRET,
    SIDECAR_TLS,
    Manifest,
    metadata,
)
from devstack.peppers import ensure_pepper
from devstack.pki import Pki, ensure_pki
from devstack.redis_auth import CONF_FILE, ensure_redis_password

HEADER = (
    "# Dev Secrets for deploy/kubernetes/overlays/dev, from {dev_dir}: private keys.\n"
    "# Never commit this. kubectl -n NAMESPACE apply -f FILE\n"
)


def secret(name: str, files: dict[str, Path], kind: str = "Opaque") -> Manifest:
    """A Secret holding each file's bytes under its key."""
    data = {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(name),
        "type": kind,
        "data": data,
    }


def _tls(name: str, cert: Path, key: Path, ca: Path) -> Manifest:
    return secret(name, {"tls.crt": cert, "tls.key": key, "ca.crt": ca}, "kubernetes.io/tls")


def _pki_secrets(pki: Pki) -> list[Manifest]:
    return [
        _tls(LISTENER_TLS, pki.envoy_cert, pki.envoy_key, pki.ca),
        _tls(CLIENT_TLS, pki.client_cert, pki.client_key, pki.ca),
        _tls(SIDECAR_TLS, pki.sidecar_cert, pki.sidecar_key, pki.ca),
    ]


def dev_secrets(dev_dir: Path) -> list[Manifest]:
    """Every Secret the dev overlay mounts (all but the optional edgeguard-redis-tls)."""
    pki = ensure_pki(dev_dir / "pki")
    idp = ensure_idp_keys(dev_dir / "idp")
    password = ensure_redis_password(dev_dir)
    idp_files = {name: idp.root / name for name in ("rs256.pem", "ed25519.pem", "jwks.json")}
    return [
        *_pki_secrets(pki),
        secret(PEPPER_SECRET, {"apikey-pepper": ensure_pepper(dev_dir)}),
        secret(REDIS_SECRET, {"password": password, "redis.conf": dev_dir / CONF_FILE}),
        secret(DEV_IDP_SECRET, idp_files),
    ]


def render_secrets(dev_dir: Path) -> str:
    documents = [dump_yaml(obj, anchors=False) for obj in dev_secrets(dev_dir)]
    return HEADER.format(dev_dir=dev_dir) + "---\n".join(documents)


def write_secrets(dev_dir: Path, out: Path) -> Path:
    """The Secrets into `out`, readable by its owner only."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(render_secrets(dev_dir))
    os.chmod(out, 0o600)
    return out
