"""One conversion with accel choice, CPU fallback, output check and metrics; the worker's FFmpeg state.

``Converter`` holds what the capability probe found and the count of consecutive Vulkan failures.
A Vulkan run that fails, stalls or writes a wrong output is rerun on the CPU in the same attempt.
A Vulkan failure counts only when the CPU rerun succeeds (otherwise the source was at fault);
``vulkan_max_failures`` in a row disable Vulkan until the worker restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from converter_common.profiles import BUILTIN_PROFILES, Profile
from worker import capabilities, ffmpeg
from worker.config import FfmpegSection
from worker.errors import FatalError, RetryableError
from worker.ffmpeg_command import TONEMAP_CURVE, VULKAN_ENCODERS, Plan, build_command, cpu_encoder, keeps_hdr, tone_maps
from worker.media import MediaInfo
from worker.metrics import WorkerMetrics

log = logging.getLogger("converter.worker")


@dataclass(frozen=True)
class ConversionResult:
    accel: str  # what produced the uploaded file: "vulkan" or "cpu"
    encoder: str
    seconds: float  # FFmpeg wall time of the run that produced it
    media_seconds: float
    fallback: str | None = None  # why the Vulkan run was abandoned, when it was
    hdr: str | None = None  # what the probe found about an HDR source and what was done with it

    @property
    def speed(self) -> float:
        return self.media_seconds / self.seconds if self.seconds > 0 else 0.0

    def job_fields(self) -> dict[str, Any]:
        return {"conversion_seconds": round(self.seconds, 3), "accel": self.accel,
                "speed": round(self.speed, 3), "vulkan_fallback": self.fallback}


class Converter:
    def __init__(self, settings: FfmpegSection, caps: capabilities.Capabilities, metrics: WorkerMetrics):
        self.settings = settings
        self.caps = caps
        self.metrics = metrics
        self._lock = threading.Lock()
        self._vulkan_failures = 0
        self.vulkan_disabled: str | None = None  # the reason, once disabled
        self._announce = False  # capabilities changed since the master last saw them

    @classmethod
    def start(cls, settings: FfmpegSection, metrics: WorkerMetrics,
              cancel: threading.Event | None = None) -> "Converter":
        """Select the binary, probe it, log the result once and set the Vulkan gauges."""
        binary = capabilities.select_binary(settings.binary, cancel)
        caps = capabilities.probe(binary, accel=settings.accel, device=settings.vulkan_device, cancel=cancel)
        converter = cls(settings, caps, metrics)
        converter._log_capabilities()
        metrics.vulkan_available.set(1 if converter.vulkan_usable else 0)
        metrics.vulkan_device.info({"name": caps.vulkan.device or "none", "type": caps.vulkan.type or "none",
                                    "ffmpeg": caps.version or "unknown"})
        return converter

    @property
    def vulkan_usable(self) -> bool:
        vk = self.caps.vulkan
        if self.settings.accel == "cpu" or not vk.available or self.vulkan_disabled or not vk.filters:
            return False
        return self.settings.accel == "vulkan" or vk.type != "cpu"  # auto never picks a software device

    def capabilities(self) -> dict[str, Any]:
        """For registration: the probe, the accel mode, each profile's forms, and whether Vulkan is off."""
        data = self.caps.to_dict()
        data["accel_mode"] = self.settings.accel
        data["accel"] = ["vulkan", "cpu"] if self.vulkan_usable else ["cpu"]
        data["vulkan"]["disabled"] = self.vulkan_disabled
        data["profiles"] = {name: [form for form in capabilities.profile_forms(p, self.caps)
                                   if form == "cpu" or self.vulkan_usable] for name, p in BUILTIN_PROFILES.items()}
        return data

    def take_announcement(self) -> bool:
        """True once after the capabilities changed (Vulkan disabled): re-register to tell the master."""
        with self._lock:
            announce, self._announce = self._announce, False
            return announce

    def probe(self, path: Path) -> MediaInfo:
        """ffprobe, or FFmpeg's own stream summary where there is no ffprobe (imageio-ffmpeg ships none)."""
        if shutil.which(self.settings.ffprobe) is None:
            return ffmpeg.probe_with_ffmpeg(self.caps.ffmpeg, path)
        return ffmpeg.probe(self.settings.ffprobe, path)

    # -- choosing -------------------------------------------------------------------------------

    def plan(self, profile: Profile, source: MediaInfo) -> Plan:
        """Vulkan when usable, its filters ran here, and it pays (a filter or a Vulkan encoder) or accel=vulkan."""
        cpu = Plan("cpu", cpu_encoder(profile, self.caps.encoders or None))
        if not self.vulkan_usable or "vulkan" not in capabilities.profile_forms(profile, self.caps):
            return cpu
        tone_map = tone_maps(profile, source)
        if tone_map and "libplacebo" not in self.caps.vulkan.filters:
            return cpu  # scale_vulkan would pass PQ code values through as SDR: washed out
        vk_encoder = VULKAN_ENCODERS.get(profile.codec)
        vk_encoder = vk_encoder if vk_encoder in self.caps.vulkan.encoders else None
        if self.settings.accel == "auto" and not profile.filter and not tone_map and vk_encoder is None:
            return cpu  # plain scaling: the CPU encoder dominates, an upload does not pay (shared/notes/vulkan.md)
        decode = self.settings.vulkan_decode and source.video_codec in self.caps.vulkan.decode
        return Plan("vulkan", vk_encoder or cpu.encoder, decode, self.settings.vulkan_device)

    # -- running --------------------------------------------------------------------------------

    def convert(self, profile: Profile, source: Path, output: Path, cancel: threading.Event,
                on_progress: Callable[[float], None] | None = None, label: str = "") -> ConversionResult:
        info = self.probe(source)
        if not info.width or not info.height:
            raise FatalError(f"{source.name} has no video stream")
        plan = self.plan(profile, info)
        hdr = hdr_handling(profile, info)
        if plan.accel != "vulkan":
            return dataclasses.replace(self._run(plan, profile, info, source, output, cancel, on_progress), hdr=hdr)
        try:
            result = self._run(plan, profile, info, source, output, cancel, on_progress)
        except (FatalError, RetryableError) as exc:
            reason = str(exc)
            log.warning("%s: Vulkan run failed (%s); rerunning on the CPU", label, reason)
            self.metrics.vulkan_fallbacks.inc()
        else:
            self._vulkan_outcome(None)
            return dataclasses.replace(result, hdr=hdr)
        cpu = Plan("cpu", cpu_encoder(profile, self.caps.encoders or None))
        result = self._run(cpu, profile, info, source, output, cancel, on_progress)  # fails too: the source's fault
        self._vulkan_outcome(reason)
        return dataclasses.replace(result, fallback=reason, hdr=hdr)

    def _run(self, plan: Plan, profile: Profile, info: MediaInfo, source: Path, output: Path,
             cancel: threading.Event, on_progress: Callable[[float], None] | None) -> ConversionResult:
        output.unlink(missing_ok=True)
        command = build_command(self.caps.ffmpeg, profile, source, output, info=info, plan=plan)
        seconds = ffmpeg.run(command, duration=info.duration, timeout=self.settings.timeout, cancel=cancel,
                             on_progress=on_progress, stall_timeout=self.settings.stall_timeout,
                             kill_grace=self.settings.kill_grace)
        ffmpeg.check_output(self.probe, output, profile, info, self.settings.duration_tolerance)
        self.metrics.conversion_done(plan.accel, profile.name, seconds, info.duration)
        return ConversionResult(plan.accel, plan.encoder, seconds, info.duration)

    def _vulkan_outcome(self, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self._vulkan_failures = 0
                return
            self._vulkan_failures += 1
            if self._vulkan_failures < self.settings.vulkan_max_failures or self.vulkan_disabled:
                return
            self.vulkan_disabled = f"{self._vulkan_failures} consecutive Vulkan failures, last: {failure}"
            self._announce = True
        self.metrics.vulkan_available.set(0)
        log.error("Vulkan disabled until the worker restarts: %s", self.vulkan_disabled)

    def _log_capabilities(self) -> None:
        caps, vk = self.caps, self.caps.vulkan
        if caps.error:
            log.error("ffmpeg probe: %s", caps.error)
            return
        vulkan = (f"{vk.device} ({vk.type}); filters {', '.join(vk.filters) or 'none'}; "
                  f"encoders {', '.join(vk.encoders) or 'none'}; decode {', '.join(vk.decode) or 'none'}"
                  if vk.available else vk.error)
        log.info("ffmpeg %s: %s; vulkan: %s; accel %s -> %s (probe %.1f s)", caps.ffmpeg, caps.version, vulkan,
                 self.settings.accel, "vulkan+cpu" if self.vulkan_usable else "cpu", caps.probe_seconds)


def hdr_handling(profile: Profile, source: MediaInfo) -> str | None:
    """For the job's log line: the source's HDR facts and the profile's answer to them; None for SDR."""
    colour = source.colour
    if colour.hdr is None and colour.dolby_vision is None:
        return None
    if tone_maps(profile, source):
        return f"{colour.describe()} tone-mapped to SDR BT.709 ({TONEMAP_CURVE})"
    return f"{colour.describe()} kept" if keeps_hdr(profile, source) else colour.describe()


ConverterFactory = Callable[[threading.Event], Converter]
"""Makes the worker's Converter on first use (the first registration), given the event that cuts its probe short."""


def probing_factory(settings: FfmpegSection, metrics: WorkerMetrics) -> ConverterFactory:
    """The production factory: select and probe the configured FFmpeg (``Converter.start``)."""
    return lambda cancel: Converter.start(settings, metrics, cancel=cancel)
