"""deploy/kubernetes: fresh, what kustomize builds, valid against Kubernetes' schemas, and
the shape the issue asks for (one pod, one exposed port, hardened, probed, sized).

No cluster and no kustomize binary run here: every kustomization lists resources only,
so `_build` (below) resolves them the way `kubectl kustomize` does, and the tests compare
that with what devstack.kubernetes says each overlay is.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devstack.configs import REPO
from devstack.envoy_config import KUBERNETES_MAX_HEAP_BYTES, build, kubernetes_profile
from devstack.kubernetes import (
    KUBE_DIR,
    OVERLAYS,
    envoy_config_text,
    kubernetes_files,
    overlay_objects,
)
from devstack.kubernetes_objects import (
    BENCH_CPU_US,
    DESIGN_RATE,
    HEALTH_PORTS,
    LISTENER_PORT,
    PKI_DIR,
    REDIS_TLS_SECRET,
    RULES_DIR,
)
from devstack.kubernetes_secrets import dev_secrets, render_secrets
from devstack.peppers import ensure_pepper
from devstack.pki import Pki, ensure_pki
from sidecar_runtime.healthcheck import check
from sidecar_runtime.server import LIVENESS, SidecarServer
from sidecar_runtime.settings import ServerSettings
from tests.support.processes import free_port

# The newest release whose schemas kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}
EDGE = {"app.kubernetes.io/name": "edgeguard", "app.kubernetes.io/component": "edge"}
SIDECAR_ADDRESSES = {"authz": "127.0.0.1:9001", "ratelimit": "127.0.0.1:9002"}
SIDECAR_CONFIGS = {"authz": "authz.yaml", "ratelimit": "ratelimit.yaml"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

Obj = dict[str, Any]


# --- what kustomize builds ---------------------------------------------------------------


def _build(directory: Path) -> list[Obj]:
    """`kubectl kustomize directory` for kustomizations of resources only (refusing any
    other field, which would transform what they list)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, kustomization
    objects: list[Obj] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += _build(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def _ids(objects: list[Obj]) -> list[tuple[str, str]]:
    return [(obj["kind"], obj["metadata"]["name"]) for obj in objects]


def test_checked_in_files_are_current() -> None:
    rendered = kubernetes_files()
    for path, text in rendered.items():
        assert path.is_file(), path
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run python -m devstack kubernetes-manifests"
        )
    on_disk = {path for path in KUBE_DIR.rglob("*") if path.is_file()}
    assert on_disk == set(rendered), "a file under deploy/kubernetes is not rendered"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_builds_exactly_the_objects_validated(overlay: str) -> None:
    built = _build(KUBE_DIR / "overlays" / overlay)
    assert built == overlay_objects(overlay)
    assert len(set(_ids(built))) == len(built), "kustomize refuses an object listed twice"


def _every_object() -> Iterator[tuple[str, Obj]]:
    for overlay in OVERLAYS:
        for obj in overlay_objects(overlay):
            yield f"{overlay}:{obj['kind']}/{obj['metadata']['name']}", obj


EVERY = dict(_every_object())


def _validate(obj: Obj) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(EVERY))
def test_every_object_of_every_overlay_validates(name: str) -> None:
    obj = EVERY[name]
    if obj["kind"] in CERT_MANAGER_KINDS:
        # cert-manager's CRDs are not in Kubernetes' schemas: kubernetes-validate says
        # so, and the fields the Deployment depends on are checked by hand below.
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            _validate(obj)
        assert obj["apiVersion"] == "cert-manager.io/v1"
        return
    _validate(obj)


def _objects(overlay: str, kind: str) -> list[Obj]:
    return [obj for obj in overlay_objects(overlay) if obj["kind"] == kind]


def _one(overlay: str, kind: str, name: str) -> Obj:
    [obj] = [o for o in _objects(overlay, kind) if o["metadata"]["name"] == name]
    return obj


# --- the pod -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge() -> Obj:
    deployment = _one("dev", "Deployment", "edgeguard")
    assert deployment == _one("production", "Deployment", "edgeguard"), "one base Deployment"
    return deployment


def _containers(deployment: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_one_pod_runs_envoy_and_both_sidecars(edge: Obj) -> None:
    containers = _containers(edge)
    assert list(containers) == ["envoy", "authz", "ratelimit"]
    assert containers["authz"]["command"][:2] == ["authz-service", "serve"]
    assert containers["ratelimit"]["command"][:2] == ["ratelimit-service", "serve"]
    assert containers["envoy"]["command"][:3] == ["envoy", "-c", "/etc/edgeguard/envoy/envoy.yaml"]


def _pod_objects() -> Iterator[tuple[str, Obj]]:
    for overlay in OVERLAYS:
        for deployment in _objects(overlay, "Deployment"):
            yield f"{overlay}:{deployment['metadata']['name']}", deployment


PODS = dict(_pod_objects())


@pytest.mark.parametrize("name", sorted(PODS))
def test_every_container_is_hardened(name: str) -> None:
    pod = PODS[name]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        assert all("emptyDir" in volumes[m["name"]] for m in writable), container["name"]
        assert {"requests", "limits"} <= set(container["resources"])
        if container["image"].startswith("edgeguard"):
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_only_envoy_declares_a_port_and_the_service_exposes_only_it(edge: Obj) -> None:
    containers = _containers(edge)
    assert containers["envoy"]["ports"] == [
        {"name": "https", "containerPort": LISTENER_PORT, "protocol": "TCP"}
    ]
    assert "ports" not in containers["authz"]
    assert "ports" not in containers["ratelimit"]
    for overlay in OVERLAYS:
        service = _one(overlay, "Service", "edgeguard")
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"] == EDGE
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (LISTENER_PORT, "https")
        ]
        others = [s for s in _objects(overlay, "Service") if s["spec"]["selector"] == EDGE]
        assert others == [service], "no other Service selects the edge pods"


def test_probes_envoy_healthz_and_sidecar_health_natively_in_grpc(edge: Obj) -> None:
    containers = _containers(edge)
    envoy = containers["envoy"]
    assert envoy["readinessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": LISTENER_PORT,
        "scheme": "HTTPS",
    }
    assert envoy["livenessProbe"]["tcpSocket"] == {"port": LISTENER_PORT}
    for name in SIDECAR_ADDRESSES:
        container = containers[name]
        grpc_checks = {probe: container[probe]["grpc"] for probe in PROBES}
        port = HEALTH_PORTS[name]
        # Ready follows the sidecar's dependencies (""); started and alive only say the
        # process serves (`liveness`), so a Redis or IdP outage never restarts it.
        assert grpc_checks == {
            "startupProbe": {"port": port, "service": LIVENESS},
            "readinessProbe": {"port": port, "service": ""},
            "livenessProbe": {"port": port, "service": LIVENESS},
        }
        assert all(set(container[p]) & {"exec", "tcpSocket", "httpGet"} == set() for p in PROBES)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
        # The drain turns `liveness` NOT_SERVING: the kubelet must not restart the sidecar
        # for it before drain + grace (10 s) are over.
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * (liveness["failureThreshold"] - 1) > 10


def test_cpu_requests_follow_the_bench_figures(edge: Obj) -> None:
    for name, container in _containers(edge).items():
        request = int(container["resources"]["requests"]["cpu"].removesuffix("m"))
        needed = DESIGN_RATE * BENCH_CPU_US[name] / 1000
        assert needed <= request < needed + 10, name
    limit_mib = int(_containers(edge)["envoy"]["resources"]["limits"]["memory"][:-2])
    heap_mib = KUBERNETES_MAX_HEAP_BYTES >> 20
    assert heap_mib < limit_mib, "the overload manager acts before the OOM killer"


def test_disruption_budget_autoscaler_and_rollout(edge: Obj) -> None:
    budget = _one("dev", "PodDisruptionBudget", "edgeguard")
    assert budget["spec"]["selector"]["matchLabels"] == EDGE
    hpa = _one("dev", "HorizontalPodAutoscaler", "edgeguard")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "edgeguard"
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    assert edge["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


# --- network -----------------------------------------------------------------------------


def _selects_edge(policy: Obj) -> bool:
    labels = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(EDGE.get(key) == value for key, value in labels.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_listener_port_is_let_in(overlay: str) -> None:
    policies = [p for p in _objects(overlay, "NetworkPolicy") if _selects_edge(p)]
    ingress = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    # From any source, 8443 only: the sidecars' health ports stay closed to other pods
    # (the kubelet's probes come from the node, which policies do not block).
    assert ingress == [{"ports": [{"protocol": "TCP", "port": LISTENER_PORT}]}]
    assert any("Ingress" in p["spec"]["policyTypes"] for p in policies)
    egress_ports = {
        (port["protocol"], port["port"])
        for p in policies
        for rule in p["spec"].get("egress", [])
        for port in rule["ports"]
    }
    assert {("UDP", 53), ("TCP", 53), ("TCP", kubernetes_profile().upstream_port)} <= egress_ports
    expected = {("TCP", 6379), ("TCP", 8082)} if overlay == "dev" else {("TCP", 6380), ("TCP", 443)}
    assert expected <= egress_ports


def test_dev_backends_answer_only_the_edge_pods() -> None:
    [policy] = [p for p in _objects("dev", "NetworkPolicy") if not _selects_edge(p)]
    assert policy["spec"]["egress"] == []
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": EDGE}}]


# --- configs, one source -------------------------------------------------------------------


def test_envoy_config_map_is_the_kubernetes_profile(edge: Obj) -> None:
    config_map = _one("dev", "ConfigMap", "edgeguard-envoy")
    text = config_map["data"]["envoy.yaml"]
    assert text == envoy_config_text()
    config = yaml.safe_load(text)
    assert config == build(kubernetes_profile(pki_dir=PKI_DIR))
    annotations = edge["spec"]["template"]["metadata"]["annotations"]
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert annotations["edgeguard.dev/envoy-config-sha256"] == digest


@pytest.fixture(scope="module")
def local_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = ensure_pki(tmp_path_factory.mktemp("kube") / "pki")
    ensure_pepper(pki.root.parent)
    return pki


def _localised(text: str, pki: Pki) -> str:
    """The pod's paths moved to a local dev dir (PKI, pepper, rules; Redis's CA: the
    dev CA stands in for production's)."""
    replacements = {
        PKI_DIR: str(pki.root),
        "/etc/edgeguard/redis-tls/ca.crt": str(pki.ca),
        RULES_DIR: str(REPO / "config" / "ratelimit" / "rules"),
        "/etc/edgeguard": str(pki.root.parent),
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def test_envoy_config_for_kubernetes_passes_envoy_validate(local_pki: Pki, tmp_path: Path) -> None:
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent))
    assert envoy is not None
    config = tmp_path / "envoy.yaml"
    config.write_text(_localised(envoy_config_text(), local_pki))
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(
    ("key", "module"), [("authz.yaml", "authz_service"), ("ratelimit.yaml", "ratelimit_service")]
)
def test_sidecar_configs_pass_check_config(
    overlay: str, key: str, module: str, local_pki: Pki, tmp_path: Path
) -> None:
    text = _one(overlay, "ConfigMap", "edgeguard-sidecars")["data"][key]
    config = tmp_path / key
    config.write_text(_localised(text, local_pki))
    done = subprocess.run(
        [sys.executable, "-m", module, "check-config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_sidecars_listen_on_the_pod_loopback_and_read_the_redis_password() -> None:
    for overlay in OVERLAYS:
        data = _one(overlay, "ConfigMap", "edgeguard-sidecars")["data"]
        authz, ratelimit = (yaml.safe_load(data[k]) for k in ("authz.yaml", "ratelimit.yaml"))
        assert authz["server"]["listen"] == SIDECAR_ADDRESSES["authz"]
        assert ratelimit["server"]["listen"] == SIDECAR_ADDRESSES["ratelimit"]
        # The health listeners on the pod's IP, where the kubelet's probes dial them.
        assert authz["server"]["health_listen"] == f"0.0.0.0:{HEALTH_PORTS['authz']}"
        assert ratelimit["server"]["health_listen"] == f"0.0.0.0:{HEALTH_PORTS['ratelimit']}"
        assert ratelimit["store"]["password_env"] == "REDIS_PASSWORD"
        assert authz["api_keys"]["password_env"] == authz["revocation"]["password_env"]
        assert authz["revocation"]["password_env"] == "REDIS_PASSWORD"
    production = _one("production", "ConfigMap", "edgeguard-sidecars")["data"]
    assert yaml.safe_load(production["ratelimit.yaml"])["store"]["url"].startswith("rediss://")
    assert yaml.safe_load(production["authz.yaml"])["issuers"][0]["issuer"].startswith("https://")


# --- Secrets: never committed, made by the dev script, or by cert-manager -----------------


def _secret_refs(overlay: str) -> dict[str, set[str]]:
    """Secret name -> keys the overlay's pods read (optional ones left out)."""
    refs: dict[str, set[str]] = {}
    for deployment in _objects(overlay, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                secret = source["secret"]
                if not secret.get("optional"):
                    keys = {item["key"] for item in secret["items"]}
                    refs.setdefault(secret["name"], set()).update(keys)
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


def test_no_secret_is_committed() -> None:
    for path in KUBE_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "kind: Secret" not in text, path
            assert "PRIVATE KEY" not in text, path


def test_dev_script_makes_every_secret_the_dev_overlay_reads(tmp_path: Path) -> None:
    secrets = {s["metadata"]["name"]: s for s in dev_secrets(tmp_path / "dev")}
    for name, keys in _secret_refs("dev").items():
        assert keys <= set(secrets[name]["data"]), name
    assert REDIS_TLS_SECRET not in secrets
    for secret in secrets.values():
        _validate(secret)
    redis = secrets["edgeguard-redis"]["data"]
    password = base64.b64decode(redis["password"]).decode().strip()
    assert base64.b64decode(redis["redis.conf"]).decode() == f"requirepass {password}\n"
    docs = [d for d in yaml.safe_load_all(render_secrets(tmp_path / "dev")) if d]
    assert docs == list(secrets.values())


def test_cert_manager_makes_the_tls_secrets_production_reads() -> None:
    certificates = {
        c["spec"]["secretName"]: c["spec"] for c in _objects("production", "Certificate")
    }
    issuers = {i["metadata"]["name"] for i in _objects("production", "Issuer")}
    tls_secrets = {name for name in _secret_refs("production") if name.endswith("-tls")}
    assert tls_secrets <= set(certificates)
    for spec in certificates.values():
        ref = spec["issuerRef"]
        assert ref["kind"] == "ClusterIssuer" or ref["name"] in issuers
    sidecar = certificates["edgeguard-sidecar-tls"]
    # Envoy checks `localhost` on the loopback; no probe presents this certificate.
    assert "localhost" in sidecar["dnsNames"]
    assert "server auth" in sidecar["usages"]
    assert "client auth" not in sidecar["usages"]


def _rendered_server(overlay: str, sidecar: str, pki: Pki) -> ServerSettings:
    """The `server:` section of an overlay's sidecar config (mTLS files moved to a local
    PKI), on free loopback ports instead of the pod's."""
    text = _one(overlay, "ConfigMap", "edgeguard-sidecars")["data"][SIDECAR_CONFIGS[sidecar]]
    server = yaml.safe_load(_localised(text, pki))["server"]
    assert server["tls"]["mode"] == "mtls"
    ports = {"listen": f"127.0.0.1:{free_port()}", "health_listen": f"127.0.0.1:{free_port()}"}
    return ServerSettings.model_validate({**server, **ports})


async def _probe(port: int, container: Obj, probe: str) -> bool:
    """The probe as the kubelet makes it: a plaintext Check of its service, SERVING or not."""
    service = container[probe]["grpc"]["service"]
    timeout = container[probe]["timeoutSeconds"]
    return await asyncio.to_thread(check, f"127.0.0.1:{port}", service=service, timeout=timeout)


@pytest.mark.grpc
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("sidecar", sorted(SIDECAR_CONFIGS))
async def test_the_probes_pass_against_the_rendered_server_settings(
    overlay: str, sidecar: str, edge: Obj, local_pki: Pki
) -> None:
    """Each probe of the pod, made as the kubelet makes it, against a server with the
    overlay's `server:` settings: started and alive while the process serves, ready only
    while the sidecar says so, and nothing alive once it drains."""
    container = _containers(edge)[sidecar]
    server = SidecarServer(_rendered_server(overlay, sidecar, local_pki), [])
    await server.start(serving=False)  # a dependency not checked yet
    assert server.health_port is not None
    try:
        assert await _probe(server.health_port, container, "startupProbe")
        assert not await _probe(server.health_port, container, "readinessProbe")
        await server.set_serving(True)
        assert all([await _probe(server.health_port, container, p) for p in PROBES])
        await server.set_serving(False)  # Redis or the IdP lost: unready, still alive
        assert not await _probe(server.health_port, container, "readinessProbe")
        assert await _probe(server.health_port, container, "livenessProbe")
        await server.drain(0)
        assert not any([await _probe(server.health_port, container, p) for p in PROBES])
    finally:
        await server.stop(0)
