"""The Kubernetes objects of deploy/kubernetes, as plain dicts (devstack.kubernetes lays
them out in files). One pod runs Envoy and both sidecars (the sidecar shape): Envoy calls
them on the pod's loopback over mTLS, and only Envoy's listener leaves the pod.

Names a reader needs to create or recognise (docs/deployment.md):

    ConfigMaps  edgeguard-envoy (base), edgeguard-ratelimit-rules (base),
                edgeguard-sidecars (each overlay: authz.yaml, ratelimit.yaml)
    Secrets     edgeguard-listener-tls, edgeguard-envoy-client-tls, edgeguard-sidecar-tls
                (kubernetes.io/tls with ca.crt: what cert-manager writes),
                edgeguard-apikey-pepper, edgeguard-redis (password, redis.conf),
                edgeguard-redis-tls (optional: ca.crt of a TLS Redis),
                edgeguard-dev-idp (dev overlay only)
"""

from __future__ import annotations

from typing import Any

from devstack.peppers import PEPPER_FILE
from devstack.redis_auth import PASSWORD_ENV
from sidecar_runtime.server import LIVENESS

Manifest = dict[str, Any]

NAME = "edgeguard"
IMAGE = "edgeguard:dev"  # docker-compose's image; set your registry's with kustomize `images:`
UID = 10001  # the Dockerfile's user
PART_OF = {"app.kubernetes.io/part-of": NAME}
EDGE_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "edge"}
DEV_BACKEND = "dev-backend"

ETC = "/etc/edgeguard"
PKI_DIR = f"{ETC}/pki"
ENVOY_CONFIG = f"{ETC}/envoy/envoy.yaml"
AUTHZ_CONFIG = f"{ETC}/sidecars/authz.yaml"
RATELIMIT_CONFIG = f"{ETC}/sidecars/ratelimit.yaml"
RULES_DIR = f"{ETC}/ratelimit-rules"
REDIS_TLS_DIR = f"{ETC}/redis-tls"
PEPPER_PATH = f"{ETC}/{PEPPER_FILE}"
TMP = "/tmp"  # noqa: S108 - an emptyDir of the pod's own

LISTENER_PORT = 8443
AUTHZ_ADDRESS = "127.0.0.1:9001"
RATELIMIT_ADDRESS = "127.0.0.1:9002"
# The sidecars' plaintext health listeners (server.health_listen), on every address of the
# pod: the kubelet's native gRPC probe dials the pod's IP, without TLS. They answer
# grpc.health.v1 and nothing else; the NetworkPolicy does not let other pods reach them
# (devstack.kubernetes_network).
HEALTH_PORTS = {"authz": 9101, "ratelimit": 9102}

ENVOY_CONFIGMAP = "edgeguard-envoy"
RULES_CONFIGMAP = "edgeguard-ratelimit-rules"
SIDECARS_CONFIGMAP = "edgeguard-sidecars"
LISTENER_TLS = "edgeguard-listener-tls"
CLIENT_TLS = "edgeguard-envoy-client-tls"
SIDECAR_TLS = "edgeguard-sidecar-tls"
PEPPER_SECRET = "edgeguard-apikey-pepper"  # noqa: S105 - a name
REDIS_SECRET = "edgeguard-redis"  # noqa: S105 - a name
REDIS_TLS_SECRET = "edgeguard-redis-tls"  # noqa: S105 - a name
DEV_IDP_SECRET = "edgeguard-dev-idp"  # noqa: S105 - a name

# Shutdown: every container's SIGTERM waits for its preStop sleep, so endpoints drop the
# pod while it still serves. The sidecars then drain for server.drain_period_seconds (5 s)
# and stop within server.grace_period_seconds (5 s), outliving Envoy, which exits on its
# SIGTERM: 5 + 5 + 5 = 15 s, well inside the grace period below.
PRESTOP_SECONDS = 5
TERMINATION_GRACE_SECONDS = 30
# Secret files readable by the pod's group (fsGroup) only: 0440.
SECRET_MODE = 0o440

# --- resources -----------------------------------------------------------------------------
#
# CPU requests are computed from `make bench`'s CPU per request (docs/benchmarks.md, the
# latest table, edgeguard-uvloop, default profile: us per request per process) at
# DESIGN_RATE req/s per pod, rounded up to 10m. The probes add nothing worth counting:
# the kubelet makes them (its CPU, not the pod's), and a sidecar answers each with one
# health Check from memory. SIZING spells the arithmetic out above the Deployment.
BENCH_CPU_US = {"envoy": 777, "authz": 594, "ratelimit": 514}  # Redis: 103, elsewhere
DESIGN_RATE = 250
HPA_CPU_PERCENT = 70
ENVOY_CONCURRENCY = 2
MEMORY = {"envoy": ("128Mi", "512Mi"), "authz": ("128Mi", "256Mi"), "ratelimit": ("128Mi", "256Mi")}


def cpu_request_millicores(name: str) -> int:
    exact = DESIGN_RATE * BENCH_CPU_US[name] / 1000
    return -(-int(exact * 100) // 1000) * 10  # up to a multiple of 10m


def resources(name: str) -> Manifest:
    """Requests from the bench (above); limits one core each: a sidecar with
    `server.workers: 1` is one process that cannot use more, and Envoy runs
    ENVOY_CONCURRENCY workers."""
    memory_request, memory_limit = MEMORY[name]
    return {
        "requests": {"cpu": f"{cpu_request_millicores(name)}m", "memory": memory_request},
        "limits": {"cpu": "1", "memory": memory_limit},
    }


def _sizing_line(name: str) -> str:
    exact = DESIGN_RATE * BENCH_CPU_US[name] / 1000
    formula = f"{DESIGN_RATE}/s x {BENCH_CPU_US[name]} us = {exact:g}m"
    return f"  {name:<10} {formula:<38} -> {cpu_request_millicores(name)}m"


SIZING = "\n".join(
    [
        "Resources, from `make bench` (docs/benchmarks.md, edgeguard-uvloop, default profile):",
        f"CPU per request per process, at an assumed {DESIGN_RATE} req/s per pod (the probes",
        "cost the kubelet's CPU, and a sidecar one health Check each); the HPA adds pods",
        f"at {HPA_CPU_PERCENT} % of these requests:",
        *(_sizing_line(name) for name in BENCH_CPU_US),
        "Limits: one core each (one sidecar worker process; Envoy --concurrency "
        f"{ENVOY_CONCURRENCY}). At the",
        f"limits Envoy saturates first: 1 core / {BENCH_CPU_US['envoy']} us = "
        f"~{1_000_000 // BENCH_CPU_US['envoy']} req/s per pod.",
        "Memory: Envoy's overload manager stops accepting requests at 98 % of its 384 MiB",
        "heap cap (devstack/envoy_config.py), under its 512Mi limit.",
    ]
)


def metadata(name: str, labels: dict[str, str] | None = None) -> Manifest:
    return {"name": name, "labels": {**PART_OF, **(labels or {})}}


def container_security() -> Manifest:
    """What every container runs with: no root, nothing writable but its volumes, no
    privilege to gain, no capability, the runtime's default seccomp filter."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(uid: int) -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def mount(name: str, path: str) -> Manifest:
    return {"name": name, "mountPath": path, "readOnly": True}


def tmp_mount(name: str) -> Manifest:
    return {"name": name, "mountPath": TMP}


def tmp_volume(name: str) -> Manifest:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}


def secret_items(secret: str, items: dict[str, str], *, optional: bool = False) -> Manifest:
    """A projected-volume source: `items` maps the Secret's keys to file names."""
    source: Manifest = {
        "name": secret,
        "items": [{"key": key, "path": path} for key, path in items.items()],
    }
    if optional:
        source["optional"] = True
    return {"secret": source}


def projected(name: str, *sources: Manifest) -> Manifest:
    return {"name": name, "projected": {"defaultMode": SECRET_MODE, "sources": list(sources)}}


def secret_env(name: str, secret: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def grpc_probe(port: int, service: str, *, period: int, failures: int) -> Manifest:
    """The kubelet's own grpc.health.v1 Check of `service`, in plaintext on the pod's IP."""
    return {
        "grpc": {"port": port, "service": service},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def sleep_before_stop() -> Manifest:
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}}


# --- the edge pod -------------------------------------------------------------------------


def _envoy_container() -> Manifest:
    return {
        "name": "envoy",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "envoy",
            "-c",
            ENVOY_CONFIG,
            "--file-flush-interval-msec",
            "1000",
            # Envoy starts a worker per core of the node, not of its CPU limit.
            "--concurrency",
            str(ENVOY_CONCURRENCY),
        ],
        "ports": [{"name": "https", "containerPort": LISTENER_PORT, "protocol": "TCP"}],
        # /healthz is 200 only while both sidecar clusters pass Envoy's own gRPC health
        # checks; the kubelet's HTTPS probe does not verify the certificate.
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": LISTENER_PORT, "scheme": "HTTPS"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # Alive means accepting connections; a sidecar's or Redis's trouble is not cured
        # by restarting Envoy, so liveness does not ask /healthz.
        "livenessProbe": {"tcpSocket": {"port": LISTENER_PORT}, "periodSeconds": 10},
        "lifecycle": sleep_before_stop(),
        "resources": resources("envoy"),
        "securityContext": container_security(),
        "volumeMounts": [
            mount("envoy-config", f"{ETC}/envoy"),
            mount("envoy-pki", PKI_DIR),
            tmp_mount("tmp-envoy"),
        ],
    }


def sidecar_probes(name: str) -> Manifest:
    """Native gRPC probes on the sidecar's health listener (server.health_listen).

    Started: `liveness` answers (the process serves), within 60 s; until then the other
    probes wait. Ready: "" is SERVING, which the sidecar sets from its own dependencies
    (authz: its issuers have keys, per health.require_all_issuers, and the revocation
    list, if any, is read; ratelimit: Redis answers, whatever the failure mode). Alive:
    `liveness` is SERVING, which no dependency moves, so a Redis or IdP outage never
    restarts a sidecar. It turns NOT_SERVING only at the drain; the third failure, 20 s
    after the first, would come after the drain and grace (10 s) have ended."""
    port = HEALTH_PORTS[name]
    return {
        "startupProbe": grpc_probe(port, LIVENESS, period=2, failures=30),
        "readinessProbe": grpc_probe(port, "", period=5, failures=2),
        "livenessProbe": grpc_probe(port, LIVENESS, period=10, failures=3),
    }


def _sidecar_container(name: str, command: list[str]) -> Manifest:
    mounts = [
        mount("sidecars-config", f"{ETC}/sidecars"),
        mount("sidecar-pki", PKI_DIR),
        mount("redis-tls", REDIS_TLS_DIR),
        tmp_mount(f"tmp-{name}"),
    ]
    return {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [secret_env(PASSWORD_ENV, REDIS_SECRET, "password")],
        **sidecar_probes(name),
        "lifecycle": sleep_before_stop(),
        "resources": resources(name),
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }


def _authz_container() -> Manifest:
    container = _sidecar_container("authz", ["authz-service", "serve", "--config", AUTHZ_CONFIG])
    container["volumeMounts"].insert(2, mount("apikey-pepper", f"{ETC}/secrets"))
    return container


def _ratelimit_container() -> Manifest:
    container = _sidecar_container(
        "ratelimit", ["ratelimit-service", "serve", "--settings", RATELIMIT_CONFIG]
    )
    container["volumeMounts"].insert(1, mount("ratelimit-rules", RULES_DIR))
    return container


def _edge_volumes() -> list[Manifest]:
    crt, key, ca = "tls.crt", "tls.key", "ca.crt"
    return [
        {"name": "envoy-config", "configMap": {"name": ENVOY_CONFIGMAP}},
        {"name": "sidecars-config", "configMap": {"name": SIDECARS_CONFIGMAP}},
        {"name": "ratelimit-rules", "configMap": {"name": RULES_CONFIGMAP}},
        # devstack.pki's file names, from Secrets in cert-manager's shape.
        projected(
            "envoy-pki",
            secret_items(LISTENER_TLS, {crt: "envoy.pem", key: "envoy-key.pem"}),
            secret_items(CLIENT_TLS, {crt: "client.pem", key: "client-key.pem", ca: "ca.pem"}),
        ),
        projected(
            "sidecar-pki",
            secret_items(SIDECAR_TLS, {crt: "sidecar.pem", key: "sidecar-key.pem", ca: "ca.pem"}),
        ),
        projected(
            "apikey-pepper",
            secret_items(PEPPER_SECRET, {"apikey-pepper": PEPPER_FILE.rpartition("/")[2]}),
        ),
        # A TLS Redis's CA (production); absent in dev, where Redis is in the cluster.
        projected("redis-tls", secret_items(REDIS_TLS_SECRET, {ca: "ca.crt"}, optional=True)),
        tmp_volume("tmp-envoy"),
        tmp_volume("tmp-authz"),
        tmp_volume("tmp-ratelimit"),
    ]


def edge_deployment(envoy_config_sha256: str) -> Manifest:
    """Envoy, authz and ratelimit in one pod. The Envoy config's hash on the template
    rolls the pods when it changes (Envoy reads it at start; the sidecars reload theirs
    on file change)."""
    spec = {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(UID),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": EDGE_LABELS},
            }
        ],
        "containers": [_envoy_container(), _authz_container(), _ratelimit_container()],
        "volumes": _edge_volumes(),
    }
    annotations = {"edgeguard.dev/envoy-config-sha256": envoy_config_sha256}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(NAME, EDGE_LABELS),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": EDGE_LABELS},
            # A new pod is ready before an old one drains (docs/operations.md, "drain").
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": {**PART_OF, **EDGE_LABELS}, "annotations": annotations},
                "spec": spec,
            },
        },
    }


def service_account() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(NAME, EDGE_LABELS),
        "automountServiceAccountToken": False,
    }


def edge_service() -> Manifest:
    """Envoy's listener, and nothing else of the pod."""
    port = {"name": "https", "port": LISTENER_PORT, "targetPort": "https", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(NAME, EDGE_LABELS),
        "spec": {"type": "ClusterIP", "selector": EDGE_LABELS, "ports": [port]},
    }


def disruption_budget() -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(NAME, EDGE_LABELS),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": EDGE_LABELS}},
    }


def autoscaler() -> Manifest:
    """CPU-based: the pod's usage over the sum of its containers' requests."""
    target = {"type": "Utilization", "averageUtilization": HPA_CPU_PERCENT}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(NAME, EDGE_LABELS),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "minReplicas": 2,
            "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }
