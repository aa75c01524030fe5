"""Master configuration: a frozen dataclass built once in ``main()`` from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from converter_common.config_loader import Duration, Size, build, load_yaml, report, require_positive
from converter_common.profiles import BUILTIN_PROFILES

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # The seed's 35 minutes: deadline for a whole request body and for an idle keep-alive connection.
    timeout: Duration = 35 * 60
    max_upload_size: Size = 64 * GiB
    chunk_size: Size = 4 * MiB  # download read/write size; 1-4 MiB measured best (shared/notes/xfer.md)
    # The data_received piece of a chunked request body (one with a Content-Length is received straight into
    # the writer's buffers instead, master/http_server.py). 1 MiB measured best when every body came this way.
    body_chunk_size: Size = 1 * MiB
    max_concurrent_uploads: int = 16  # more at once get 503 + Retry-After
    max_header_size: Size = 64 * 1024
    outbound_limit: Size = 0  # bytes/s for all downloads together (one token bucket); 0 = unlimited

    def validate(self, key: str) -> None:
        if not 0 <= self.port <= 65535:
            report(f"{key}.port", f"must be 0..65535, got {self.port}")
        require_positive(f"{key}.timeout", self.timeout)
        require_positive(f"{key}.max_upload_size", self.max_upload_size)
        require_positive(f"{key}.max_concurrent_uploads", self.max_concurrent_uploads)
        require_positive(f"{key}.max_header_size", self.max_header_size)
        require_positive(f"{key}.outbound_limit", self.outbound_limit, allow_zero=True)
        if not 64 * 1024 <= self.chunk_size <= 64 * MiB:
            report(f"{key}.chunk_size", f"must be 64 KiB..64 MiB, got {self.chunk_size}")
        if not 16 * 1024 <= self.body_chunk_size <= 16 * MiB:
            report(f"{key}.body_chunk_size", f"must be 16 KiB..16 MiB, got {self.body_chunk_size}")


@dataclass(frozen=True)
class StorageConfig:
    root: Path = Path("/var/lib/converter/storage")
    # uploads are written with O_DIRECT where the filesystem allows it (converter_common/background_file_writer.py)
    direct_io: bool = True


@dataclass(frozen=True)
class DatabaseConfig:
    path: Path = Path("/var/lib/converter/converter.db")


@dataclass(frozen=True)
class JobsConfig:
    lease_seconds: Duration = 60.0  # a claimed job returns to pending if its worker is silent this long
    max_attempts: int = 3
    retry_delay: Duration = 10.0  # seconds a retryable failure waits before the job can be claimed again
    max_claim_wait: Duration = 30.0  # longest long-poll a worker may ask for
    quarantine_after: int = 5  # consecutive failed jobs on one worker before it gets no jobs for a while
    quarantine_seconds: Duration = 600.0
    # a resumable upload not continued this long is removed with its bytes (tus expiration, Upload-Expires)
    upload_expiry: Duration = 24 * 3600.0

    def validate(self, key: str) -> None:
        require_positive(f"{key}.lease_seconds", self.lease_seconds)
        require_positive(f"{key}.max_attempts", self.max_attempts)
        require_positive(f"{key}.retry_delay", self.retry_delay, allow_zero=True)
        require_positive(f"{key}.max_claim_wait", self.max_claim_wait, allow_zero=True)
        require_positive(f"{key}.quarantine_after", self.quarantine_after)
        require_positive(f"{key}.quarantine_seconds", self.quarantine_seconds, allow_zero=True)
        require_positive(f"{key}.upload_expiry", self.upload_expiry)


@dataclass(frozen=True)
class WatchConfig:
    inbox: str | None = None  # a folder under the storage root; files dropped there become jobs (off when unset)
    accepted_dir: str = "watched"  # where picked-up files are moved, under the storage root
    profile: str = "h264-720p"
    stable_seconds: Duration = 5.0  # a file is complete when its size and mtime are unchanged this long
    interval: Duration = 2.0  # seconds between scans

    def validate(self, key: str) -> None:
        for name in ("inbox", "accepted_dir"):
            value = getattr(self, name)
            if value is not None and (value.startswith("/") or ".." in Path(value).parts):
                report(f"{key}.{name}", "must be a folder under the storage root (relative, no '..')")
        if self.inbox is not None and Path(self.inbox) == Path(self.accepted_dir):
            report(f"{key}.accepted_dir", "must differ from the inbox")
        require_positive(f"{key}.stable_seconds", self.stable_seconds, allow_zero=True)
        require_positive(f"{key}.interval", self.interval)


@dataclass(frozen=True)
class AuthConfig:
    admin_token_file: Path | None = None  # e.g. ${CREDENTIALS_DIRECTORY}/admin-token under systemd
    worker_token_file: Path | None = None
    allow_anonymous: bool = False  # needed to run without tokens on a non-loopback address


@dataclass(frozen=True)
class MasterConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    profiles: tuple[str, ...] = tuple(BUILTIN_PROFILES)

    def validate(self, key: str) -> None:
        for name in self.profiles:
            if name not in BUILTIN_PROFILES:
                report("profiles", f"unknown profile {name!r} (built-in: {', '.join(BUILTIN_PROFILES)})")
        if self.watch.inbox is not None and self.watch.profile not in self.profiles:
            report("watch.profile", f"must be one of the master's profiles: {', '.join(self.profiles)}")


def load_config(path: str | Path | None) -> MasterConfig:
    data = load_yaml(path) if path else {}
    return build(MasterConfig, data)
