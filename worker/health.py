"""Health checks (profile ``health-check``): decode the whole source, collect what FFmpeg reports, write nothing.

The CPU form is ``ffmpeg -v error -i SOURCE -map 0:v? -map 0:a? -f null -``: every video and audio stream is
decoded and every error line FFmpeg prints is collected (the first ``HEALTH_MAX_ERRORS``, each cut at
``HEALTH_MAX_LINE`` characters, and how many there were). No ``-xerror``: an error does not stop the decode, so
the result lists what the whole file has. The Vulkan form adds ``-hwaccel vulkan`` on the slot's device where the
capability probe decoded the source's class there (``Converter._decodes``, as for a conversion).

A Vulkan decode that reports anything is decoded again on the CPU, whose verdict is the result (a driver's fault
is not the file's); when the CPU finds the file clean, the failure counts against the device like a failed Vulkan
conversion. A source FFmpeg cannot open at all is unhealthy, with FFmpeg's (or ffprobe's) error. What is not the
file's fault (FFmpeg killed by a signal, host trouble, the hard timeout, a stall) raises as for a conversion.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from converter_common.protocol import HEALTH_MAX_ERRORS, HEALTH_MAX_LINE
from worker.conversion import Converter
from worker.errors import RetryableError
from worker.ffmpeg import FfmpegHostFailure, FfmpegRejectedInput, classify_failure, die_with_parent, supervise
from worker.media import MediaInfo

log = logging.getLogger("converter.worker")


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    errors: tuple[str, ...]  # FFmpeg's first error lines
    error_count: int  # every error line it printed
    decoder: str  # "cpu" or "vulkan": the decode whose verdict this is
    seconds: float
    media_seconds: float
    fallback: str | None = None  # why a Vulkan decode was set aside for the CPU's, when it was

    def to_dict(self) -> dict[str, Any]:
        """What the worker reports (``POST /api/worker/health-result``) and the job records as ``health``."""
        return {"healthy": self.healthy, "errors": list(self.errors), "error_count": self.error_count,
                "decoder": self.decoder, "fallback": self.fallback}

    def job_fields(self) -> dict[str, Any]:
        """The decode's figures, recorded like a conversion's (a heartbeat's ``conversion``)."""
        speed = self.media_seconds / self.seconds if self.seconds > 0 else 0.0
        return {"conversion_seconds": round(self.seconds, 3), "accel": self.decoder, "speed": round(speed, 3),
                "vulkan_fallback": self.fallback}


@dataclass
class Decode:
    """One decode run: its exit status, the error lines kept and counted, its wall time."""

    returncode: int
    lines: list[str] = field(default_factory=list)
    count: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and self.count == 0

    def host_failure(self) -> FfmpegHostFailure | None:
        """Not the file's fault: FFmpeg killed by a signal, or an error exit whose lines blame the host."""
        if self.returncode < 0:
            return FfmpegHostFailure(f"ffmpeg was killed by signal {-self.returncode}")
        if self.returncode > 0:
            failure = classify_failure("ffmpeg failed", "\n".join(self.lines) or f"exit code {self.returncode}")
            return failure if isinstance(failure, FfmpegHostFailure) else None
        return None

    def describe(self) -> str:
        """Why a Vulkan decode is set aside: its first error (or its exit status)."""
        first = self.lines[0] if self.lines else f"exit code {self.returncode}"
        return f"Vulkan decode reported {self.count or 1} error(s), first: {first}"


def command(binary: str, source: Path, vulkan_device: str | None = None) -> list[str]:
    """The decode: every video and audio stream to the null muxer, errors on stderr, progress on stdout."""
    args = [binary, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
    if vulkan_device is not None:
        args += ["-init_hw_device", f"vulkan=vk:{vulkan_device}", "-hwaccel", "vulkan", "-hwaccel_device", "vk"]
    return args + ["-i", str(source), "-map", "0:v?", "-map", "0:a?", "-f", "null", "-progress", "pipe:1", "-"]


def check(converter: Converter, source: Path, cancel: threading.Event, *, label: str = "", slot: int = 0,
          on_progress: Callable[[float], None] | None = None) -> HealthResult:
    """Decode ``source`` whole (on the slot's Vulkan device where the probe proved its class, else the CPU)."""
    try:
        info: MediaInfo | None = converter.probe(source, hdr_metadata=False)
        unreadable = None
    except FfmpegRejectedInput as exc:  # FFmpeg's own decode below says more, or the same
        info, unreadable = None, str(exc)
    duration = info.duration if info is not None else 0.0
    device = converter.device_for(slot)
    fallback = None
    if device is not None and info is not None and info.video_codec and converter._decodes(info, device):
        try:
            vulkan = decode(converter, command(converter.caps.ffmpeg, source, device.info.index), duration, cancel,
                            on_progress)
            fallback = None if vulkan.clean else vulkan.describe()
        except RetryableError as exc:  # a stall or the timeout on the GPU: the CPU decides
            fallback = f"Vulkan decode: {exc}"
        if fallback is None:
            converter._vulkan_outcome(None, device)
            return _result(vulkan, "vulkan", duration, unreadable)
        log.warning("%s: %s; decoding again on the CPU", label, fallback)
        converter.metrics.vulkan_fallbacks.inc()
    cpu = decode(converter, command(converter.caps.ffmpeg, source), duration, cancel, on_progress)
    failure = cpu.host_failure()
    if failure is not None:
        raise failure
    if fallback is not None and cpu.clean:  # the CPU found the file clean where the Vulkan decode did not
        converter._vulkan_outcome(fallback, device)
    return _result(cpu, "cpu", duration, unreadable, fallback)


def _result(run: Decode, decoder: str, duration: float, unreadable: str | None,
            fallback: str | None = None) -> HealthResult:
    lines, count = run.lines, run.count
    if not lines and run.returncode != 0:
        lines, count = [f"ffmpeg exit code {run.returncode}"], 1
    if not lines and unreadable is not None:  # FFmpeg decoded what ffprobe could not read: still not healthy
        lines, count = [unreadable[:HEALTH_MAX_LINE]], 1
    return HealthResult(not lines, tuple(lines), count, decoder, run.seconds, duration, fallback)


def decode(converter: Converter, args: list[str], duration: float, cancel: threading.Event,
           on_progress: Callable[[float], None] | None = None) -> Decode:
    """Run one decode under the conversion's watchdog (``ffmpeg.timeout``, ``stall_timeout``, cancel); every
    stderr line is an error (``-loglevel error``): the first ones kept, all counted."""
    settings = converter.settings
    started = time.monotonic()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=die_with_parent, text=True, errors="replace",
                               bufsize=1)
    run = Decode(returncode=0)

    def collect() -> None:
        for line in process.stderr:
            line = line.strip()
            if line:
                run.count += 1
                if len(run.lines) < HEALTH_MAX_ERRORS:
                    run.lines.append(line[:HEALTH_MAX_LINE])

    drain = threading.Thread(target=collect, daemon=True)
    drain.start()
    run.returncode = supervise(process, drain, "health check", duration=duration, timeout=settings.timeout,
                               cancel=cancel, on_progress=on_progress, stall_timeout=settings.stall_timeout,
                               kill_grace=settings.kill_grace)
    run.seconds = time.monotonic() - started
    return run
