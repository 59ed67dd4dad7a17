"""The Envoy global rate-limit sidecar: token buckets shared through Redis."""
