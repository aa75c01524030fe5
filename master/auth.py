"""Bearer tokens: a worker token for the worker protocol, an admin token for managing jobs."""

from __future__ import annotations

import enum
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from converter_common.config_loader import ConfigError


class Access(enum.Enum):
    OPEN = "open"  # /healthz, /metrics
    READ = "read"  # listing jobs and workers: either token
    WORKER = "worker"  # the worker protocol: the worker token (or the admin token, for curl users)
    ADMIN = "admin"  # submitting, cancelling, retrying: the admin token


@dataclass(frozen=True)
class Tokens:
    admin: str | None = None
    worker: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.admin is None and self.worker is None

    def allows(self, access: Access, authorization: str | None) -> bool | None:
        """True when allowed; None when no (valid) token was shown; False when the token lacks the right."""
        if self.anonymous or access is Access.OPEN:
            return True
        presented = _bearer(authorization)
        is_admin = presented is not None and _same(presented, self.admin)
        is_worker = presented is not None and _same(presented, self.worker)
        if not (is_admin or is_worker):
            return None
        return is_admin or access in (Access.READ, Access.WORKER)


def load_tokens(admin_file: Path | None, worker_file: Path | None) -> Tokens:
    """Read the token files (``$CREDENTIALS_DIRECTORY`` and other variables in the paths are expanded)."""
    if (admin_file is None) != (worker_file is None):
        raise ConfigError("auth", "set both admin_token_file and worker_token_file, or neither")
    return Tokens(admin=_read_token(admin_file, "auth.admin_token_file"),
                  worker=_read_token(worker_file, "auth.worker_token_file"))


def refuse_open_exposure(host: str, tokens: Tokens, allow_anonymous: bool) -> None:
    """A master reachable from other hosts must not run without tokens unless the operator says so."""
    if tokens.anonymous and not allow_anonymous and not _is_loopback(host):
        raise ConfigError("auth", f"server.host {host!r} is not loopback: configure auth.admin_token_file and "
                                  "auth.worker_token_file, or set auth.allow_anonymous: true")


def expand(path: Path) -> Path:
    return Path(os.path.expandvars(str(path)))


def _read_token(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    try:
        token = expand(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read token file ({exc.strerror})") from None
    if len(token) < 16:
        raise ConfigError(key, "token must be at least 16 characters")
    return token


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
