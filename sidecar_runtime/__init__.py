"""What both sidecars share: server bootstrap (TLS/mTLS, health, reflection, workers,
signals), config loading and reload, JSON logging, the audit sink and the clock."""
