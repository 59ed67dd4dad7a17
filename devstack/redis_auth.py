"""The dev Redis password (docker-compose, the Kubernetes dev overlay), and the launcher
that hands a secret file to a process as the environment variable its config names.

`ensure_redis_password(dev_dir)` makes, once, under `dev_dir/redis/`:

    password     the password, for the sidecars (`password_env: REDIS_PASSWORD` in their
                 configs) and for `redis-cli`
    redis.conf   `requirepass <it>`: compose's redis-server reads this file as its
                 config, so the password is never on a command line

Both are 0640 in a 0750 directory: compose runs Redis as its own user in the group of the
`init` service that wrote them (docker-compose.yml). Never committed (.dev/ is ignored).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

PASSWORD_ENV = "REDIS_PASSWORD"  # noqa: S105 - a variable's name
PASSWORD_FILE = "redis/password"  # noqa: S105 - a path
CONF_FILE = "redis/redis.conf"
_MODE = 0o640


def _write_group_readable(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, _MODE)


def ensure_redis_password(dev_dir: Path) -> Path:
    """The dev Redis password file under `dev_dir` (and its redis.conf), made if missing;
    an existing password is kept, so a running Redis and the sidecars keep agreeing."""
    password_file = dev_dir / PASSWORD_FILE
    if password_file.is_file() and password_file.read_text().strip():
        password = password_file.read_text().strip()
    else:
        password_file.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(password_file.parent, 0o750)  # noqa: S103 - the group: see above
        # URL-safe characters only: nothing to quote in redis.conf, a URL or a shell.
        password = secrets.token_urlsafe(32)
        _write_group_readable(password_file, password + "\n")
    conf = f"requirepass {password}\n"
    conf_file = dev_dir / CONF_FILE
    if not conf_file.is_file() or conf_file.read_text() != conf:
        _write_group_readable(conf_file, conf)
    return password_file


def parse_assignments(items: Sequence[str]) -> dict[str, Path]:
    """`NAME=FILE` strings as {NAME: FILE}; ValueError names a malformed one."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name.isidentifier() or not file:
            raise ValueError(f"expected NAME=FILE, got {item!r}")
        out[name] = Path(file)
    return out


def secret_environment(assignments: dict[str, Path]) -> dict[str, str]:
    """The current environment plus each NAME set to the first line of its FILE."""
    env = dict(os.environ)
    for name, file in assignments.items():
        lines = file.read_text().splitlines()
        env[name] = lines[0] if lines else ""
    return env


def exec_with_secrets(assignments: dict[str, Path], command: Sequence[str]) -> None:
    """Replace this process with `command`, its environment holding the secrets. exec, not
    a child: the service gets the container's signals (SIGTERM drains) directly."""
    env = secret_environment(assignments)
    os.execvpe(command[0], list(command), env)  # noqa: S606 - our own command line
