"""Errors shared by both sidecars.

ConfigError       bad configuration: names the file, the key path and the reason.
                  The process refuses to start (exit code 2); a reload keeps the old config.
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A configuration problem located by file and key path."""

    exit_code = 2

    def __init__(self, file: str | Path, key: str, reason: str) -> None:
        self.file = str(file)
        self.key = key or "<root>"
        self.reason = reason
        super().__init__(f"{self.file}: {self.key}: {self.reason}")
