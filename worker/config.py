"""Worker configuration: a frozen dataclass built once in ``main()`` from YAML (the seed's ``storage:`` section)."""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from converter_common.config_loader import ConfigError, Duration, Size, build, load_yaml, report, require_positive
from worker.schedule import ScheduleError, parse_window

MiB = 1 << 20
ACCELS = ("auto", "vulkan", "cpu")


@dataclass(frozen=True)
class MasterSection:
    url: str = "http://127.0.0.1:8080"
    token_file: Path | None = None  # the worker token; e.g. ${CREDENTIALS_DIRECTORY}/worker-token under systemd

    def token(self) -> str | None:
        """The bearer token, read from ``token_file`` (environment variables in the path are expanded)."""
        if self.token_file is None:
            return None
        try:
            return Path(os.path.expandvars(str(self.token_file))).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("master.token_file", f"cannot read token file ({exc.strerror})") from None

    def validate(self, key: str) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            report(f"{key}.url", f"must be an http(s) URL, got {self.url!r}")


@dataclass(frozen=True)
class WorkerSection:
    id: str = field(default_factory=socket.gethostname)
    concurrency: int | str = "auto"  # jobs in parallel, each in its own cache dir; auto: from the GPUs and cores
    claim_wait: Duration = 20.0  # long-poll: how long one claim request waits for a job
    heartbeat_interval: Duration = 10.0  # must stay well below the master's lease (60 s by default)
    progress_interval: Duration = 5.0  # seconds between transfer/conversion progress log lines
    drain_timeout: Duration = 0.0  # on SIGTERM: seconds running jobs may take to finish before they are given back
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9101  # Prometheus /metrics; 0 turns the endpoint off
    # local-time windows in which it claims jobs, e.g. ["22:00-07:00", "sat,sun 00:00-24:00"]; none: always
    schedule: tuple[str, ...] = ()

    def validate(self, key: str) -> None:
        if self.concurrency != "auto" and not (isinstance(self.concurrency, int) and 1 <= self.concurrency <= 64):
            report(f"{key}.concurrency", f"must be 1..64 or auto, got {self.concurrency!r}")
        require_positive(f"{key}.claim_wait", self.claim_wait, allow_zero=True)
        require_positive(f"{key}.heartbeat_interval", self.heartbeat_interval)
        require_positive(f"{key}.progress_interval", self.progress_interval)
        require_positive(f"{key}.drain_timeout", self.drain_timeout, allow_zero=True)
        if not 0 <= self.metrics_port <= 65535:
            report(f"{key}.metrics_port", f"must be 0..65535, got {self.metrics_port}")
        for index, window in enumerate(self.schedule):
            try:
                parse_window(window)
            except ScheduleError as exc:
                report(f"{key}.schedule[{index}]", str(exc))


@dataclass(frozen=True)
class StorageSection:
    mode: str = "transfer"  # transfer: files move over HTTP; shared: read and write them on mount_path
    mount_path: Path = Path("/mnt/videos")  # the master's storage root, mounted here (shared mode only)
    download_timeout: Duration = 1800.0  # seconds without a byte before a transfer is given up
    upload_timeout: Duration = 1800.0
    cache_path: Path = Path("/var/cache/converter")
    # iter_content size of downloads; 1 MiB measured best (the seed's 10 MiB cost RSS and page faults, no speed)
    chunk_size: Size = 1 * MiB
    upload_protocol: str = "tus"  # tus: resumable uploads; multipart: the seed's upload-video endpoint
    direct_io: bool = True  # downloads are written with O_DIRECT where the filesystem allows it

    def validate(self, key: str) -> None:
        require_positive(f"{key}.download_timeout", self.download_timeout)
        require_positive(f"{key}.upload_timeout", self.upload_timeout)
        if self.mode not in ("transfer", "shared"):
            report(f"{key}.mode", f"must be transfer or shared, got {self.mode!r}")
        if self.upload_protocol not in ("tus", "multipart"):
            report(f"{key}.upload_protocol", f"must be tus or multipart, got {self.upload_protocol!r}")
        if not 64 * 1024 <= self.chunk_size <= 256 * MiB:
            report(f"{key}.chunk_size", f"must be 64 KiB..256 MiB, got {self.chunk_size}")


@dataclass(frozen=True)
class TransferSection:
    """Bandwidth limits (the seed's ``transfer.bandwidth_limit``), bytes per second per direction; 0 = unlimited.

    One token bucket per direction for the whole worker, shared by its concurrent jobs.
    """

    download_limit: Size = 0
    upload_limit: Size = 0

    def validate(self, key: str) -> None:
        require_positive(f"{key}.download_limit", self.download_limit, allow_zero=True)
        require_positive(f"{key}.upload_limit", self.upload_limit, allow_zero=True)


@dataclass(frozen=True)
class RetrySection:
    attempts: int = 3
    base_delay: Duration = 2.0
    factor: float = 2.0
    cap: Duration = 60.0
    # a finished output is kept, its upload retried (at most 30 s apart), this long while the master is away; 0: off
    upload_window: Duration = 900.0

    def validate(self, key: str) -> None:
        require_positive(f"{key}.attempts", self.attempts)
        require_positive(f"{key}.base_delay", self.base_delay, allow_zero=True)
        if self.factor < 1:
            report(f"{key}.factor", f"must be >= 1, got {self.factor}")
        require_positive(f"{key}.cap", self.cap, allow_zero=True)
        require_positive(f"{key}.upload_window", self.upload_window, allow_zero=True)


@dataclass(frozen=True)
class FfmpegSection:
    # "auto": the system ffmpeg, or imageio-ffmpeg's (extra "vulkan") when the system one lacks the Vulkan filters
    binary: str = "auto"
    ffprobe: str = "ffprobe"
    timeout: Duration = 6 * 3600.0  # hard limit for one conversion
    stall_timeout: Duration = 180.0  # no new frame / out_time for this long: SIGTERM, then SIGKILL
    kill_grace: Duration = 5.0  # seconds between SIGTERM and SIGKILL (a hung Vulkan decode ignores SIGTERM)
    # auto: Vulkan on a GPU for profiles with a Vulkan filter or encoder; vulkan: always (a CPU device too); cpu: never
    accel: str = "auto"
    # Vulkan device indices (-init_hw_device vulkan=vk:<index>), job slots pinned round-robin; auto: every GPU
    vulkan_devices: tuple[int, ...] | str = "auto"
    # auto: decode on the GPU where the start-up probe decoded the source's codec/bit depth/size; true: always; false
    vulkan_decode: bool | str = "auto"
    decode_probe_timeout: Duration = 10.0  # one probe decode of a few frames; a hang turns its codec's decode off
    vulkan_max_failures: int = 3  # consecutive Vulkan failures that disable Vulkan until restart
    duration_tolerance: Duration = 1.0  # output duration may differ from the source by this (or 1 %) at most

    def validate(self, key: str) -> None:
        require_positive(f"{key}.timeout", self.timeout)
        require_positive(f"{key}.stall_timeout", self.stall_timeout)
        require_positive(f"{key}.kill_grace", self.kill_grace, allow_zero=True)
        if self.accel not in ACCELS:
            report(f"{key}.accel", f"must be one of {', '.join(ACCELS)}, got {self.accel!r}")
        require_positive(f"{key}.vulkan_max_failures", self.vulkan_max_failures)
        require_positive(f"{key}.decode_probe_timeout", self.decode_probe_timeout)
        if self.vulkan_decode not in (True, False, "auto"):
            report(f"{key}.vulkan_decode", f"must be auto, true or false, got {self.vulkan_decode!r}")
        devices = self.vulkan_devices
        if devices != "auto" and (isinstance(devices, str) or not devices or min(devices) < 0):
            report(f"{key}.vulkan_devices", f"must be auto or a list of device indices, got {self.vulkan_devices!r}")
        require_positive(f"{key}.duration_tolerance", self.duration_tolerance)


@dataclass(frozen=True)
class WorkerConfig:
    master: MasterSection = field(default_factory=MasterSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    storage: StorageSection = field(default_factory=StorageSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    retry: RetrySection = field(default_factory=RetrySection)
    ffmpeg: FfmpegSection = field(default_factory=FfmpegSection)


def load_config(path: str | Path | None) -> WorkerConfig:
    data = load_yaml(path) if path else {}
    return build(WorkerConfig, data)
