"""The Envoy ext_authz v3 sidecar: JWT authentication, route policy (scopes, RBAC roles,
CEL conditions), RFC 6750 denials and identity headers/metadata on allow."""
