"""Prometheus metrics of the worker. Everything takes a registry, so each test gets a fresh one."""

from __future__ import annotations

import os
from pathlib import Path

from converter_common.version import package_version
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

DIRECTIONS = ("download", "upload")
OUTCOMES = ("completed", "skipped", "failed", "retried", "released", "lost")
# 0.1 s to 2 h: a multi-GB file over a slow WAN link still lands in a bucket.
TRANSFER_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
THROUGHPUT_BUCKETS = (1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9)
CONVERSION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
SPEED_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.transfer_bytes = Counter("converter_worker_transfer_bytes", "Bytes moved to or from the master.",
                                      ["direction"], registry=registry)
        self.transfer_duration = Histogram("converter_worker_transfer_duration_seconds",
                                           "Wall time of successful transfers.", ["direction"],
                                           buckets=TRANSFER_BUCKETS, registry=registry)
        self.transfer_throughput = Histogram("converter_worker_transfer_throughput_bytes_per_second",
                                             "Throughput of each successful transfer.", ["direction"],
                                             buckets=THROUGHPUT_BUCKETS, registry=registry)
        self.transfer_retries = Counter("converter_worker_transfer_retries", "Transfer attempts that were retried.",
                                        ["direction"], registry=registry)
        self.transfer_failures = Counter("converter_worker_transfer_failures",
                                         "Transfers given up after their last attempt.", ["direction"],
                                         registry=registry)
        for direction in DIRECTIONS:
            for metric in (self.transfer_bytes, self.transfer_duration, self.transfer_throughput,
                           self.transfer_retries, self.transfer_failures):
                metric.labels(direction)
        self.conversion_duration = Histogram("converter_worker_conversion_duration_seconds",
                                             "FFmpeg wall time per conversion.", ["accel", "profile"],
                                             buckets=CONVERSION_BUCKETS, registry=registry)
        self.conversion_speed = Histogram("converter_worker_conversion_speed_ratio",
                                          "Media seconds converted per wall second.", ["accel", "profile"],
                                          buckets=SPEED_BUCKETS, registry=registry)
        self.vulkan_fallbacks = Counter("converter_worker_vulkan_fallbacks",
                                        "Vulkan conversions rerun on the CPU.", registry=registry)
        self.jobs_in_progress = Gauge("converter_worker_jobs_in_progress", "Jobs being processed now.",
                                      registry=registry)
        self.jobs_finished = Counter("converter_worker_jobs_finished", "Jobs this worker stopped working on.",
                                     ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.jobs_finished.labels(outcome)
        self.vulkan_available = Gauge("converter_worker_vulkan_available", "1 when a Vulkan device is usable.",
                                      registry=registry)
        self.vulkan_device = Info("converter_worker_vulkan_device", "The Vulkan device in use.", registry=registry)
        # label device: the position in ffmpeg.vulkan_devices (a handful); decode: codec/depth/size (at most 12)
        self.device_available = Gauge("converter_worker_vulkan_device_available",
                                      "1 while this Vulkan device takes jobs, 0 when it failed its probe or was"
                                      " disabled (`device`: its position in `ffmpeg.vulkan_devices`).", ["device"],
                                      registry=registry)
        self.device_conversions = Counter("converter_worker_vulkan_device_conversions",
                                          "Vulkan runs on this device, `ok` or `failed` (rerun on the CPU).",
                                          ["device", "outcome"],
                                          registry=registry)
        self.decode_proven = Gauge("converter_worker_vulkan_decode_proven",
                                   "1 when the start-up probe decoded this class (`hevc/10bit/uhd`: codec/bit"
                                   " depth/size, at most 12) on this device, so jobs use Vulkan decode for it; 0 when"
                                   " it failed, hung or was skipped.",
                                   ["device", "decode"], registry=registry)
        self.schedule_open = Gauge("converter_worker_schedule_open", "1 while the worker may claim by its"
                                   " worker.schedule (always 1 without one), 0 outside its windows.", registry=registry)
        self.schedule_open.set(1)
        Info("converter_worker_build", "Version of the running worker.", registry=registry).info(
            {"version": package_version()})

    def prepare_conversion_series(self, profiles: list[str], accels: list[str]) -> None:
        """Create the conversion series up front, so dashboards show 0 (not nothing) before the first job."""
        for accel in accels:
            for profile in profiles:
                self.conversion_duration.labels(accel, profile)
                self.conversion_speed.labels(accel, profile)

    def device_probed(self, device: str, usable: bool, decode_probe: dict[str, str]) -> None:
        self.device_available.labels(device).set(1 if usable else 0)
        for outcome in ("ok", "failed"):
            self.device_conversions.labels(device, outcome)
        for decode_class, outcome in decode_probe.items():
            self.decode_proven.labels(device, decode_class).set(1 if outcome == "ok" else 0)

    def device_conversion(self, device: str, ok: bool) -> None:
        self.device_conversions.labels(device, "ok" if ok else "failed").inc()

    def watch_cache(self, cache_path: Path) -> None:
        """Cache size and free space, measured at scrape time (a walk of a few job dirs and one statvfs)."""
        size = Gauge("converter_worker_cache_size_bytes", "Bytes in the worker's cache dir.", registry=self.registry)
        size.set_function(lambda: directory_size(cache_path))
        free = Gauge("converter_worker_cache_free_bytes", "Free bytes on the cache's filesystem.",
                     registry=self.registry)
        free.set_function(lambda: free_bytes(cache_path))

    def transfer_done(self, direction: str, size: int, seconds: float) -> None:
        self.transfer_duration.labels(direction).observe(seconds)
        if seconds > 0:
            self.transfer_throughput.labels(direction).observe(size / seconds)

    def conversion_done(self, accel: str, profile: str, seconds: float, media_seconds: float) -> None:
        self.conversion_duration.labels(accel, profile).observe(seconds)
        if seconds > 0 and media_seconds > 0:
            self.conversion_speed.labels(accel, profile).observe(media_seconds / seconds)


def directory_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass  # a job finished and removed its file during the walk
    return total


def free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        return 0
    return st.f_bavail * st.f_frsize

