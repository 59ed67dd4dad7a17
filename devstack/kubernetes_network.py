"""The NetworkPolicies of deploy/kubernetes. Policies add up: the base one lets only the
listener in and lets out what every deployment needs (DNS, the upstream API); each
overlay adds the egress its Redis and IdP need, as objects of its own."""

from __future__ import annotations

from devstack.kubernetes_objects import (
    DEV_BACKEND,
    EDGE_LABELS,
    LISTENER_PORT,
    NAME,
    Manifest,
    metadata,
)

# Cluster DNS: CoreDNS keeps kube-dns's label in kube-system on most distributions.
DNS_PEER: Manifest = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DEV_PORTS = {"redis": 6379, "idp": 8082, "upstream": 8081}
# Production's Redis: plain or TLS (6380 is a common TLS port), and Sentinel; the IdP's
# JWKS and discovery over https. Narrow `to:` to their addresses where you know them.
PRODUCTION_REDIS_PORTS = (6379, 6380, 26379)
IDP_HTTPS_PORT = 443


def tcp(port: int) -> Manifest:
    return {"protocol": "TCP", "port": port}


def _policy(name: str, selector: dict[str, str], types: list[str], **rules: object) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name),
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": types, **rules},
    }


def edge_policy(upstream_port: int) -> Manifest:
    """Into the edge pod: the listener only (the sidecars are on its loopback). Out: DNS
    and the upstream API.

    The sidecars' health ports (kubernetes_objects.HEALTH_PORTS) are not let in: no other
    pod needs them. The kubelet's probes still are, because they come from the pod's own
    node: NetworkPolicySpec's `ingress` reference says traffic is allowed to a pod "if the
    traffic source is the pod's local node", and the Network Policies page lists blocking
    "access from their resident node" as something policies cannot do."""
    dns = {"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": 53}, tcp(53)]}
    return _policy(
        NAME,
        EDGE_LABELS,
        ["Ingress", "Egress"],
        ingress=[{"ports": [tcp(LISTENER_PORT)]}],
        egress=[dns, {"ports": [tcp(upstream_port)]}],
    )


def _backend(name: str) -> Manifest:
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}


def dev_edge_egress() -> Manifest:
    """The dev overlay's Redis and IdP, in the namespace."""
    egress = [
        {"to": [_backend(name)], "ports": [tcp(DEV_PORTS[name])]} for name in ("redis", "idp")
    ]
    return _policy(f"{NAME}-dev-egress", EDGE_LABELS, ["Egress"], egress=egress)


def dev_backends_policy() -> Manifest:
    """The dev backends (Redis, IdP, demo API) answer the edge pods only and call out to
    nothing."""
    edge = {"podSelector": {"matchLabels": EDGE_LABELS}}
    ports = [tcp(port) for port in DEV_PORTS.values()]
    return _policy(
        f"{NAME}-dev-backends",
        {"app.kubernetes.io/component": DEV_BACKEND},
        ["Ingress", "Egress"],
        ingress=[{"from": [edge], "ports": ports}],
        egress=[],
    )


def production_egress() -> Manifest:
    egress = [
        {"ports": [tcp(port) for port in PRODUCTION_REDIS_PORTS]},
        {"ports": [tcp(IDP_HTTPS_PORT)]},
    ]
    return _policy(f"{NAME}-production-egress", EDGE_LABELS, ["Egress"], egress=egress)
