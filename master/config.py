"""Master configuration: a frozen dataclass built once in ``main()`` from YAML."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from converter_common.config_loader import Duration, Size, Units, build, load_yaml, report, require_positive
from converter_common.profiles import (BUILTIN_PROFILES, PROFILE_NAME, Profile, ProfileDefinitionError,
                                       configured_profile)

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
class S3Config:
    """``storage.s3``: the bucket of an S3-compatible store (``storage.backend: s3``)."""

    endpoint: str = ""  # http(s)://host:port of the S3 API
    bucket: str = ""
    region: str = "us-east-1"
    prefix: str = ""  # every key is <prefix>/<path>; the same path rules as for files apply
    # AWS shared-credentials file ([default] aws_access_key_id / aws_secret_access_key), readable by the owner only;
    # unset: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN), else ~/.aws/credentials (AWS_PROFILE)
    credentials_file: Path | None = None
    presign_expiry: Duration = 3600.0  # how long a URL handed to a worker or client stays valid
    part_size: Size = 64 * MiB  # multipart upload part size (doubled for a file that would need > 10,000 parts)

    def validate(self, key: str) -> None:
        if self.endpoint and not re.match(r"^https?://[^/\s]+/?$", self.endpoint):
            report(f"{key}.endpoint", f"must be http(s)://host[:port], got {self.endpoint!r}")
        if self.bucket and not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", self.bucket):
            report(f"{key}.bucket", f"is not a valid bucket name: {self.bucket!r}")
        prefix = self.prefix.strip("/")
        if prefix and (".." in prefix.split("/") or any(ord(c) < 0x20 or c in "\\\x7f" for c in prefix)):
            report(f"{key}.prefix", "must be a plain folder name (no '..', no control characters, no backslash)")
        if not 1 <= self.presign_expiry <= 7 * 24 * 3600:
            report(f"{key}.presign_expiry", f"must be 1s..7d, got {self.presign_expiry}")
        if not 5 * MiB <= self.part_size <= 5 * GiB:
            report(f"{key}.part_size", f"must be 5MiB..5GiB, got {self.part_size}")


@dataclass(frozen=True)
class StorageConfig:
    # local: sources and outputs are files under ``root``; s3: keys in ``s3.bucket`` (``root`` then only holds
    # bodies relayed through the master while they arrive)
    backend: str = "local"
    root: Path = Path("/var/lib/converter/storage")
    # uploads are written with O_DIRECT where the filesystem allows it (converter_common/background_file_writer.py)
    direct_io: bool = True
    s3: S3Config = field(default_factory=S3Config)

    def validate(self, key: str) -> None:
        if self.backend not in ("local", "s3"):
            report(f"{key}.backend", f"must be local or s3, got {self.backend!r}")
        if self.backend == "s3":
            for name in ("endpoint", "bucket"):
                if not getattr(self.s3, name):
                    report(f"{key}.s3.{name}", "is required with backend s3")
            if self.s3.credentials_file is not None:
                check_private_file(f"{key}.s3.credentials_file", self.s3.credentials_file)

    @property
    def in_bucket(self) -> bool:
        return self.backend == "s3"


@dataclass(frozen=True)
class DatabaseConfig:
    path: Path = Path("/var/lib/converter/converter.db")  # the SQLite file (the embedded default)
    # postgresql://user@host:5432/db: the queue in PostgreSQL instead, shared by several masters
    url: str | None = None
    password_file: Path | None = None  # the PostgreSQL password, from a file readable by the owner only

    def validate(self, key: str) -> None:
        if self.url is not None and not re.match(r"^postgres(ql)?://[^\s]+$", self.url):
            report(f"{key}.url", "must be a postgresql:// URL")
        if self.password_file is not None:
            if self.url is None:
                report(f"{key}.password_file", "needs database.url")
            check_private_file(f"{key}.password_file", self.password_file)

    def location(self) -> str | Path:
        """What ``JobStore`` opens: the PostgreSQL URL (with the password from ``password_file``) or the file."""
        if self.url is None:
            return self.path
        if self.password_file is None:
            return self.url
        password = Path(os.path.expandvars(str(self.password_file))).read_text(encoding="utf-8").strip()
        scheme, rest = self.url.split("://", 1)
        user_host = rest.split("@", 1)
        if len(user_host) == 1:
            raise ValueError("database.url needs a user (postgresql://user@host/db) for password_file")
        user = user_host[0].split(":", 1)[0]
        return f"{scheme}://{user}:{quote(password, safe='')}@{user_host[1]}"


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
    # signs the console's session cookies; made (mode 0600) on first start; default: console-secret beside
    # database.path. Masters behind one balancer share it.
    console_secret_file: Path | None = None


WEBHOOK_EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.skipped", "worker.lost", "queue.drained")


@dataclass(frozen=True)
class WebhookSubscription:
    """One receiver: ``webhooks.subscriptions[n]``."""

    name: str = ""  # names the subscription in deliveries and metrics; unique
    url: str = ""  # http(s)://host[:port]/path: each event is POSTed here
    events: tuple[str, ...] = ()
    secret_file: Path | None = None  # the HMAC-SHA256 key, from a file readable by the owner only

    def validate(self, key: str) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.name):
            report(f"{key}.name", f"must be 1-64 letters, digits, '_', '.' or '-', got {self.name!r}")
        if not re.match(r"^https?://[^/\s?#]+(/[^\s]*)?$", self.url):
            report(f"{key}.url", f"must be an http:// or https:// URL, got {self.url!r}")
        if not self.events:
            report(f"{key}.events", f"must list at least one of: {', '.join(WEBHOOK_EVENTS)}")
        for event in self.events:
            if event not in WEBHOOK_EVENTS:
                report(f"{key}.events", f"unknown event {event!r} (known: {', '.join(WEBHOOK_EVENTS)})")
        if self.secret_file is None:
            report(f"{key}.secret_file", "is required: deliveries are signed with its key")
        else:
            check_private_file(f"{key}.secret_file", self.secret_file)

    def secret(self) -> bytes:
        assert self.secret_file is not None
        return Path(os.path.expandvars(str(self.secret_file))).read_bytes().strip()


@dataclass(frozen=True)
class WebhooksConfig:
    subscriptions: tuple[WebhookSubscription, ...] = ()
    timeout: Duration = 10.0  # one delivery attempt (connect and answer)
    retry_for: Duration = 3600.0  # after this long since the event, a delivery that never succeeded ends failed
    backoff: Duration = 1.0  # wait after the first failed attempt; doubled after each, up to max_backoff
    max_backoff: Duration = 300.0
    poll_interval: Duration = 1.0  # how often a master looks for events and deliveries due
    concurrency: int = 10  # attempts in flight at once, per master
    retention: Duration = 7 * 86400.0  # deliveries that ended (and their events) are forgotten after this long

    def validate(self, key: str) -> None:
        for name in ("timeout", "retry_for", "backoff", "max_backoff", "poll_interval", "concurrency", "retention"):
            require_positive(f"{key}.{name}", getattr(self, name))
        names = [s.name for s in self.subscriptions]
        for name in sorted({n for n in names if names.count(n) > 1}):
            report(f"{key}.subscriptions", f"name {name!r} is used twice")


class ProfileTable(Mapping[str, Profile]):
    """The profiles a master accepts, by name, in the order GET /api/profiles lists them: the built-in ones (all, or
    those a list form of ``profiles:`` names), then the configured ones. Immutable."""

    __slots__ = ("_profiles",)

    def __init__(self, profiles: tuple[Profile, ...] = tuple(BUILTIN_PROFILES.values())):
        object.__setattr__(self, "_profiles", {p.name: p for p in profiles})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ProfileTable is immutable")

    def __getitem__(self, name: str) -> Profile:
        return self._profiles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProfileTable) and tuple(self.values()) == tuple(other.values())

    def __hash__(self) -> int:
        return hash(tuple(self.values()))

    def __repr__(self) -> str:
        return f"ProfileTable({', '.join(self)})"

    @property
    def configured(self) -> list[Profile]:
        return [p for p in self.values() if p.base]


def parse_profiles(value: Any, key: str) -> ProfileTable:
    """``profiles:``. A mapping of name to definition (``base``: a built-in, and the fields to override; see
    ``converter_common.profiles.configured_profile``): every built-in profile and these. A list of built-in names
    (the older form): only those. A configured name may not be a built-in's: a built-in means the same everywhere."""
    if isinstance(value, list):
        names = []
        for name in value:
            if not isinstance(name, str) or name not in BUILTIN_PROFILES:
                report(key, f"unknown profile {name!r} (built-in: {', '.join(BUILTIN_PROFILES)}; configured profiles"
                            " are a mapping of name to definition)")
            elif name in names:
                report(key, f"lists {name!r} twice")
            else:
                names.append(name)
        return ProfileTable(tuple(BUILTIN_PROFILES[name] for name in names))
    if not isinstance(value, dict):
        report(key, f"must be a mapping of profile name to definition (base: a built-in profile, and the fields it "
                    f"changes), got {type(value).__name__}")
        return ProfileTable()
    configured = []
    for name, definition in value.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not PROFILE_NAME.match(name):
            report(where, "is not a profile name (1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)")
            continue
        if name in BUILTIN_PROFILES:
            report(where, f"is a built-in profile's name: choose another (a configured profile names its base: "
                          f"base: {name})")
            continue
        if not isinstance(definition, dict):
            report(where, f"must be a mapping (base: a built-in profile, and the fields it changes), got "
                          f"{type(definition).__name__}")
            continue
        try:
            configured.append(configured_profile(name, definition))
        except ProfileDefinitionError as exc:
            for field_name, message in exc.problems:
                report(f"{where}.{field_name}", message)
    return ProfileTable((*BUILTIN_PROFILES.values(), *configured))


@dataclass(frozen=True)
class MasterConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    # the accepted profiles: built-in and configured (``parse_profiles``; docs/api.md, "Profiles")
    profiles: Annotated[ProfileTable, Units(parse_profiles)] = field(default_factory=ProfileTable)

    def validate(self, key: str) -> None:
        if self.watch.inbox is not None and self.watch.profile not in self.profiles:
            report("watch.profile", f"must be one of the master's profiles: {', '.join(self.profiles)}")


def check_private_file(key: str, path: Path) -> None:
    """A secret's file: there, readable, and not readable by group or others (0600 or 0400)."""
    try:
        mode = os.stat(os.path.expandvars(str(path))).st_mode
    except OSError as exc:
        report(key, f"cannot read {path}: {exc.strerror}")
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        report(key, f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")


def load_config(path: str | Path | None) -> MasterConfig:
    data = load_yaml(path) if path else {}
    return build(MasterConfig, data)
