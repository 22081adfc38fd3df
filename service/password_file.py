"""DATABASE_PASSWORD_FILE: the database password, read from a file for every new connection.

A Kubernetes secret mount, a Vault agent's template or a sidecar writing RDS IAM tokens
replace the file when the password rotates; reading it per connection picks the new one up
with no restart. Used by the service's pools and the migrate command alike; the password is
never kept, logged or printed, only the file's path is.
"""

from __future__ import annotations

from pathlib import Path

VARIABLE = "DATABASE_PASSWORD_FILE"


class PasswordFileError(Exception):
    """The file cannot give a password (missing, unreadable, empty). Deliberately not an
    OSError: asyncpg would take one for an unreachable host and try the next."""


def read_password(path: Path) -> str:
    """The file's content without its trailing line end; PasswordFileError naming the
    file (never its content) if there is none to read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PasswordFileError(f"{VARIABLE}: cannot read {path} ({exc.strerror})") from None
    try:
        password = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise PasswordFileError(f"{VARIABLE}: {path} is not UTF-8 text") from None
    if not password:
        raise PasswordFileError(f"{VARIABLE}: {path} is empty")
    return password
