"""The local development stack: dev PKI, dev identity provider, demo upstream, `make run`."""
