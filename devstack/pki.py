"""Dev PKI: a CA, Envoy's listener certificate, the sidecars' server certificate, Envoy's
client certificate for mTLS to the sidecars, and a demo service's client certificate for
Envoy's listener (an mTLS identity of the demo policy). Made at run time, never committed.

Files (ARCHITECTURE.md section 4): ca.pem (+ ca-key.pem), envoy.pem/envoy-key.pem,
sidecar.pem/sidecar-key.pem, client.pem/client-key.pem, service.pem/service-key.pem
(SPIFFE ID `SERVICE_SPIFFE_ID`). Private keys are written 0600. Idempotent: existing,
still-valid files are kept; a set whose sidecar certificate lacks a name of
`SIDECAR_NAMES` (one made before those names) is made again.

The sidecar certificate carries every name a sidecar is reached by in each topology, and
Envoy checks the one it dials (devstack.envoy_config.sidecar_server_name): the loopback
(`localhost`: the local stack, and Kubernetes, where Envoy shares the sidecars' pod) and
the docker-compose service names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 365
_SANS = ("localhost", "127.0.0.1", "::1")
# Compose service names (docker-compose.yml) after the loopback names.
SIDECAR_NAMES = (*_SANS, "authz", "ratelimit")
# The demo service that calls the API with its certificate (config/authz/demo.yaml, mtls).
SERVICE_SPIFFE_ID = "spiffe://edgeguard.dev/ns/demo/sa/reports-job"


@dataclass(frozen=True)
class Pki:
    root: Path

    def _p(self, name: str) -> Path:
        return self.root / name

    ca = property(lambda self: self._p("ca.pem"))
    envoy_cert = property(lambda self: self._p("envoy.pem"))
    envoy_key = property(lambda self: self._p("envoy-key.pem"))
    sidecar_cert = property(lambda self: self._p("sidecar.pem"))
    sidecar_key = property(lambda self: self._p("sidecar-key.pem"))
    client_cert = property(lambda self: self._p("client.pem"))
    client_key = property(lambda self: self._p("client-key.pem"))
    service_cert = property(lambda self: self._p("service.pem"))
    service_key = property(lambda self: self._p("service-key.pem"))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue_certificate(
    *,
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier | tuple[x509.ObjectIdentifier, ...],
    sans: tuple[str, ...],
    uri: str | None = None,
) -> tuple[bytes, bytes]:
    usages = usage if isinstance(usage, tuple) else (usage,)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names = list(_san(sans))
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeguard dev CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _still_valid(pki: Pki) -> bool:
    files = [
        pki.ca,
        pki.envoy_cert,
        pki.envoy_key,
        pki.sidecar_cert,
        pki.sidecar_key,
        pki.client_cert,
        pki.client_key,
        pki.service_cert,
        pki.service_key,
    ]
    if not all(f.is_file() for f in files):
        return False
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    for cert_file in (pki.ca, pki.envoy_cert, pki.sidecar_cert, pki.client_cert, pki.service_cert):
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        if cert.not_valid_after_utc < soon:
            return False
    return set(SIDECAR_NAMES) <= set(certificate_names(pki.sidecar_cert))


def certificate_names(cert_file: Path) -> list[str]:
    """The DNS and IP subject alternative names of the certificate in `cert_file`."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return [*sans.get_values_for_type(x509.DNSName), *addresses]


def ensure_pki(root: Path) -> Pki:
    """Create the dev PKI under `root` unless a complete, unexpired one is already there."""
    pki = Pki(root)
    if _still_valid(pki):
        return pki
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ca_cert, ca_key = make_ca()
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(root / "ca-key.pem", _key_pem(ca_key))
    server = ExtendedKeyUsageOID.SERVER_AUTH
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    for cert_path, key_path, cn, usage, sans, uri in (
        (pki.envoy_cert, pki.envoy_key, "localhost", server, _SANS, None),
        # clientAuth too: `python -m sidecar_runtime.healthcheck` run inside a container
        # (compose's healthcheck) proves itself to its mTLS listener with this certificate.
        (
            pki.sidecar_cert,
            pki.sidecar_key,
            "edgeguard-sidecar",
            (server, client),
            SIDECAR_NAMES,
            None,
        ),
        (pki.client_cert, pki.client_key, "envoy", client, _SANS, "spiffe://edgeguard.dev/envoy"),
        # A SPIFFE X.509-SVID carries its ID as its only URI SAN and no DNS names.
        (pki.service_cert, pki.service_key, "reports-job", client, (), SERVICE_SPIFFE_ID),
    ):
        cert_pem, key_pem = issue_certificate(
            common_name=cn, ca_cert=ca_cert, ca_key=ca_key, usage=usage, sans=sans, uri=uri
        )
        cert_path.write_bytes(cert_pem)
        _write_private(key_path, key_pem)
    return pki
