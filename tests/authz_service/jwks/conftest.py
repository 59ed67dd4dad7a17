"""The token tests' fixtures (signing keys, a fake clock, a local IdP), shared here."""

from tests.authz_service.tokens.conftest import clock, idp, keys

__all__ = ["clock", "idp", "keys"]
