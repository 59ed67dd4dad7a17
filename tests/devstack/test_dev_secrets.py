"""Dev PKI and IdP keys: made on first run, idempotent, private keys 0600; the token CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from joserfc import jwt
from joserfc.jwk import KeySet

from devstack.idp_keys import ensure_idp_keys
from devstack.pki import ensure_pki


def test_pki_files_sans_modes_and_idempotence(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    for key in (pki.envoy_key, pki.sidecar_key, pki.client_key, pki.root / "ca-key.pem"):
        assert key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(pki.envoy_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)][:1] == ["127.0.0.1"]
    before = {p.name: p.read_bytes() for p in pki.root.iterdir()}
    ensure_pki(tmp_path / "pki")
    assert {p.name: p.read_bytes() for p in pki.root.iterdir()} == before


def test_pki_is_remade_when_a_file_is_missing(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    old_ca = pki.ca.read_bytes()
    pki.client_key.unlink()
    ensure_pki(tmp_path / "pki")
    assert pki.client_key.is_file()
    assert pki.ca.read_bytes() != old_ca  # a whole new, consistent set


def test_idp_keys_thumbprint_kids_and_idempotence(tmp_path: Path) -> None:
    keys = ensure_idp_keys(tmp_path / "idp")
    jwks = json.loads(keys.jwks_file.read_text())
    assert [(k["kty"], k["alg"]) for k in jwks["keys"]] == [("RSA", "RS256"), ("OKP", "EdDSA")]
    assert [k["kid"] for k in jwks["keys"]] == [keys.rs256.thumbprint(), keys.ed25519.thumbprint()]
    assert all("d" not in k for k in jwks["keys"])  # public parts only
    for name in ("rs256.pem", "ed25519.pem"):
        assert (keys.root / name).stat().st_mode & 0o777 == 0o600
    again = ensure_idp_keys(tmp_path / "idp")
    assert again.public_jwks() == keys.public_jwks()


def test_token_cli_mints_what_the_jwks_verifies(tmp_path: Path) -> None:
    args = ["--dev-dir", str(tmp_path), "--sub", "alice", "--scope", "users:read",
            "--roles", "admin,support", "--alg", "EdDSA", "--ttl", "60"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "token", *args],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    keys = KeySet.import_key_set(json.loads((tmp_path / "idp" / "jwks.json").read_text()))
    claims = jwt.decode(done.stdout.strip(), keys, algorithms=["EdDSA"]).claims
    assert (claims["sub"], claims["scope"]) == ("alice", "users:read")
    assert claims["roles"] == ["admin", "support"]
    assert claims["exp"] - claims["iat"] == 60
    assert done.stderr == ""  # no joserfc "EdDSA is deprecated" noise for the README's user
