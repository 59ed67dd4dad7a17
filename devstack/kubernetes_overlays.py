"""What only one overlay of deploy/kubernetes has: the dev backends (Redis with a
password, the dev IdP, the demo API) and production's cert-manager resources."""

from __future__ import annotations

from devstack.kubernetes_network import DEV_PORTS
from devstack.kubernetes_objects import (
    CLIENT_TLS,
    DEV_BACKEND,
    DEV_IDP_SECRET,
    ETC,
    IMAGE,
    LISTENER_TLS,
    REDIS_SECRET,
    SIDECAR_TLS,
    UID,
    Manifest,
    container_security,
    metadata,
    mount,
    pod_security,
    projected,
    secret_env,
    secret_items,
    tmp_mount,
    tmp_volume,
)

REDIS_IMAGE = "redis:7.0-alpine"  # docker-compose's
REDIS_UID = 999  # the image's `redis` user
DEV_ISSUER = f"http://idp:{DEV_PORTS['idp']}"
DEV_REDIS_URL = f"redis://redis:{DEV_PORTS['redis']}/0"


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": DEV_BACKEND}


def _backend(
    name: str, container: Manifest, *, uid: int, volumes: list[Manifest]
) -> list[Manifest]:
    """A one-replica Deployment and its Service on the backend's port."""
    labels = _labels(name)
    port = DEV_PORTS[name]
    container.update(
        {
            "name": name,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "tcp", "containerPort": port, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "securityContext": container_security(),
        }
    )
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(uid),
        "containers": [container],
        "volumes": volumes,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, labels),
        "spec": {"selector": labels, "ports": [{"name": "tcp", "port": port, "targetPort": port}]},
    }
    return [deployment, service]


def dev_redis() -> list[Manifest]:
    """Redis that asks for the password of the Secret edgeguard-redis: redis-server reads
    it from the Secret's redis.conf (never a command-line argument), and redis-cli in the
    probe from REDISCLI_AUTH."""
    container = {
        "image": REDIS_IMAGE,
        "args": ["redis-server", "/etc/redis/redis.conf", "--save", "", "--appendonly", "no"],
        "env": [secret_env("REDISCLI_AUTH", REDIS_SECRET, "password")],
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", "redis-cli ping | grep -q PONG"]},
            "periodSeconds": 5,
        },
        "livenessProbe": {"tcpSocket": {"port": DEV_PORTS["redis"]}, "periodSeconds": 10},
        "volumeMounts": [mount("redis-conf", "/etc/redis"), {"name": "data", "mountPath": "/data"}],
    }
    volumes = [
        projected("redis-conf", secret_items(REDIS_SECRET, {"redis.conf": "redis.conf"})),
        tmp_volume("data"),
    ]
    return _backend("redis", container, uid=REDIS_UID, volumes=volumes)


def dev_idp() -> list[Manifest]:
    """The dev IdP (JWKS and discovery) with the keys of `.dev/idp`, from a Secret."""
    port = DEV_PORTS["idp"]
    keys = {name: name for name in ("rs256.pem", "ed25519.pem", "jwks.json")}
    container = {
        "image": IMAGE,
        "command": [
            *("python", "-m", "devstack", "idp", "--dev-dir", ETC),
            *("--issuer", DEV_ISSUER, "--listen", f"0.0.0.0:{port}"),
        ],
        "readinessProbe": {"httpGet": {"path": "/jwks.json", "port": port}, "periodSeconds": 5},
        "volumeMounts": [mount("idp-keys", f"{ETC}/idp"), tmp_mount("tmp")],
    }
    volumes = [projected("idp-keys", secret_items(DEV_IDP_SECRET, keys)), tmp_volume("tmp")]
    return _backend("idp", container, uid=UID, volumes=volumes)


def dev_upstream() -> list[Manifest]:
    """The demo API behind the edge (the Service `upstream` Envoy's config names)."""
    port = DEV_PORTS["upstream"]
    container = {
        "image": IMAGE,
        "command": ["python", "-m", "devstack", "upstream", "--listen", f"0.0.0.0:{port}"],
        "readinessProbe": {
            "httpGet": {"path": "/api/v1/public/ping", "port": port},
            "periodSeconds": 5,
        },
        "volumeMounts": [tmp_mount("tmp")],
    }
    return _backend("upstream", container, uid=UID, volumes=[tmp_volume("tmp")])


# --- production: cert-manager ------------------------------------------------------------
#
# A private CA for the link between Envoy and its sidecars (bootstrapped self-signed, the
# usual cert-manager pattern), and the listener's certificate from an issuer clients
# already trust. The Secrets come out in the shape the Deployment mounts (tls.crt,
# tls.key, ca.crt), under the names the dev script uses.

CERT_MANAGER = "cert-manager.io/v1"
CA_ISSUER = "edgeguard-ca"
PUBLIC_ISSUER = "letsencrypt-prod"  # a ClusterIssuer of yours (ACME or corporate CA)
PUBLIC_NAME = "api.example.com"
_KEY = {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}


def _issuer(name: str, spec: Manifest) -> Manifest:
    return {"apiVersion": CERT_MANAGER, "kind": "Issuer", "metadata": metadata(name), "spec": spec}


def _certificate(
    name: str, spec: Manifest, issuer: str = CA_ISSUER, kind: str = "Issuer"
) -> Manifest:
    ref = {"name": issuer, "kind": kind, "group": "cert-manager.io"}
    full = {"privateKey": _KEY, "duration": "2160h", "renewBefore": "720h", **spec}
    return {
        "apiVersion": CERT_MANAGER,
        "kind": "Certificate",
        "metadata": metadata(name),
        "spec": {**full, "issuerRef": ref},
    }


def cert_manager() -> list[Manifest]:
    selfsigned = f"{CA_ISSUER}-selfsigned"
    return [
        _issuer(selfsigned, {"selfSigned": {}}),
        _certificate(
            CA_ISSUER,
            {"isCA": True, "commonName": "edgeguard internal CA", "secretName": CA_ISSUER},
            issuer=selfsigned,
        ),
        _issuer(CA_ISSUER, {"ca": {"secretName": CA_ISSUER}}),
        # Envoy dials the sidecars on the pod's loopback and checks `localhost`. Server
        # auth only: the probes ask the plaintext health listeners, so nothing in the pod
        # presents this certificate as a client.
        _certificate(
            "edgeguard-sidecar",
            {
                "secretName": SIDECAR_TLS,
                "commonName": "edgeguard-sidecar",
                "dnsNames": ["localhost"],
                "ipAddresses": ["127.0.0.1", "::1"],
                "usages": ["digital signature", "server auth"],
            },
        ),
        _certificate(
            "edgeguard-envoy-client",
            {
                "secretName": CLIENT_TLS,
                "commonName": "envoy",
                "usages": ["digital signature", "client auth"],
            },
        ),
        _certificate(
            "edgeguard-listener",
            {"secretName": LISTENER_TLS, "dnsNames": [PUBLIC_NAME], "usages": ["server auth"]},
            issuer=PUBLIC_ISSUER,
            kind="ClusterIssuer",
        ),
    ]
