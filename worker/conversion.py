"""One conversion with accel choice, CPU fallback, output check and metrics; the worker's FFmpeg state.

``Converter`` holds what the capability probe found and the count of consecutive Vulkan failures.
A Vulkan run that fails, stalls or writes a wrong output is rerun on the CPU in the same attempt.
A Vulkan failure counts only when the CPU rerun succeeds (otherwise the source was at fault);
``vulkan_max_failures`` in a row on one device disable that device until the worker restarts (Vulkan
altogether once no device is left). Each job slot runs on its device (``worker.devices``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from converter_common.profiles import BUILTIN_PROFILES, Profile
from worker import capabilities, ffmpeg
from worker.config import FfmpegSection
from worker.devices import Device, auto_slots, device_for_slot
from worker.errors import FatalError, RetryableError
from worker.ffmpeg_command import (TONEMAP_CURVE, VULKAN_DECODE_CODECS, VULKAN_ENCODERS, Plan, build_command,
                                   cpu_encoder, keeps_hdr, tone_maps)
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
        self.devices = [Device(position, info) for position, info in enumerate(caps.devices or [caps.vulkan])]
        self.vulkan_disabled: str | None = None  # the reason, once every device is disabled
        self._announce = False  # capabilities changed since the master last saw them
        self._auto_slots: int | None = None

    @classmethod
    def start(cls, settings: FfmpegSection, metrics: WorkerMetrics,
              cancel: threading.Event | None = None) -> "Converter":
        """Select the binary, probe it, log the result once and set the Vulkan gauges."""
        binary = capabilities.select_binary(settings.binary, cancel)
        caps = capabilities.probe(binary, accel=settings.accel, devices=settings.vulkan_devices,
                                  decode=settings.vulkan_decode is not False,
                                  decode_timeout=settings.decode_probe_timeout, cancel=cancel)
        converter = cls(settings, caps, metrics)
        converter._log_capabilities()
        metrics.vulkan_available.set(1 if converter.vulkan_usable else 0)
        metrics.vulkan_device.info({"name": caps.vulkan.device or "none", "type": caps.vulkan.type or "none",
                                    "ffmpeg": caps.version or "unknown"})
        for device in converter.devices:
            metrics.device_probed(str(device.position), device.usable(settings.accel), device.info.decode_probe)
        return converter

    @property
    def vulkan_usable(self) -> bool:
        return self.settings.accel != "cpu" and any(device.usable(self.settings.accel) for device in self.devices)

    def device_for(self, slot: int) -> Device | None:
        if self.settings.accel == "cpu":
            return None
        with self._lock:
            return device_for_slot(slot, self.devices, self.settings.accel)

    def auto_concurrency(self, cpus: int | None = None) -> int:
        """``worker.concurrency: auto`` (``worker.devices.auto_slots``) for the GPUs usable at start-up; fixed then,
        since the slots are started once."""
        with self._lock:
            if self._auto_slots is None:
                gpus = sum(device.usable("auto") for device in self.devices) if self.settings.accel != "cpu" else 0
                cpus = cpus or len(os.sched_getaffinity(0))
                self._auto_slots = auto_slots(cpus, gpus)
                log.info("worker.concurrency auto: %d slots (%d GPUs, %d cores)", self._auto_slots, gpus, cpus)
            return self._auto_slots

    def capabilities(self) -> dict[str, Any]:
        """For registration: the probe, the accel mode, each profile's forms, and whether Vulkan is off."""
        data = self.caps.to_dict()
        data["accel_mode"] = self.settings.accel
        data["accel"] = ["vulkan", "cpu"] if self.vulkan_usable else ["cpu"]
        data["vulkan"]["disabled"] = self.vulkan_disabled
        with self._lock:
            data["devices"] = [device.to_dict() for device in self.devices]
        data["profiles"] = {name: [form for form in capabilities.profile_forms(p, self.caps)
                                   if form == "cpu" or self.vulkan_usable] for name, p in BUILTIN_PROFILES.items()}
        return data

    def take_announcement(self) -> bool:
        """True once after the capabilities changed (Vulkan disabled): re-register to tell the master."""
        with self._lock:
            announce, self._announce = self._announce, False
            return announce

    def probe(self, path: Path, hdr_metadata: bool = True) -> MediaInfo:
        """ffprobe, or FFmpeg's own stream summary where there is no ffprobe (imageio-ffmpeg ships none);
        ``hdr_metadata``: an HDR source's mastering display and light levels too (a one-frame decode)."""
        if shutil.which(self.settings.ffprobe) is None:
            return ffmpeg.probe_with_ffmpeg(self.caps.ffmpeg, path, hdr_metadata)
        return ffmpeg.probe(self.settings.ffprobe, path, hdr_metadata)

    # -- choosing -------------------------------------------------------------------------------

    def plan(self, profile: Profile, source: MediaInfo, slot: int = 0) -> Plan:
        """The plan for a job of ``slot`` on the slot's device (``_plan``)."""
        return self._plan(profile, source, self.device_for(slot))

    def _plan(self, profile: Profile, source: MediaInfo, device: Device | None) -> Plan:
        """Vulkan when usable, its filters ran here, and it pays (a filter or a Vulkan encoder) or accel=vulkan."""
        cpu = Plan("cpu", cpu_encoder(profile, self.caps.encoders or None))
        if device is None or "vulkan" not in capabilities.profile_forms(profile, self.caps, device.info):
            return cpu
        tone_map = tone_maps(profile, source)
        if tone_map and "libplacebo" not in device.info.filters:
            return cpu  # scale_vulkan would pass PQ code values through as SDR: washed out
        vk_encoder = VULKAN_ENCODERS.get(profile.codec)
        vk_encoder = vk_encoder if vk_encoder in device.info.encoders else None
        if self.settings.accel == "auto" and not profile.filter and not tone_map and vk_encoder is None:
            return cpu  # plain scaling: the CPU encoder dominates, an upload does not pay (shared/notes/vulkan.md)
        return Plan("vulkan", vk_encoder or cpu.encoder, self._decodes(source, device), device.info.index)

    def _decodes(self, source: MediaInfo, device: Device) -> bool:
        """``vulkan_decode``: auto where the probe decoded the source's class on this device; true for every codec
        FFmpeg decodes on Vulkan (the stall watchdog and the CPU rerun cover the rest); false never."""
        if self.settings.vulkan_decode is True:
            return source.video_codec in VULKAN_DECODE_CODECS
        return self.settings.vulkan_decode == "auto" and device.info.decodes(
            capabilities.decode_class(source.video_codec, source.pix_fmt, source.width, source.height))

    # -- running --------------------------------------------------------------------------------

    def convert(self, profile: Profile, source: Path, output: Path, cancel: threading.Event,
                on_progress: Callable[[float], None] | None = None, label: str = "", slot: int = 0) -> ConversionResult:
        info = self.probe(source, hdr_metadata=profile.hdr == "keep")  # tone mapping does without it
        if not info.width or not info.height:
            raise FatalError(f"{source.name} has no video stream")
        device = self.device_for(slot)
        plan = self._plan(profile, info, device)
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
            self._vulkan_outcome(None, device)
            return dataclasses.replace(result, hdr=hdr)
        cpu = Plan("cpu", cpu_encoder(profile, self.caps.encoders or None))
        result = self._run(cpu, profile, info, source, output, cancel, on_progress)  # fails too: the source's fault
        self._vulkan_outcome(reason, device)
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

    def _vulkan_outcome(self, failure: str | None, device: Device | None = None) -> None:
        """Count a Vulkan run's outcome against its device; disable the device after too many failures in a row."""
        device = device or self.devices[0]
        self.metrics.device_conversion(str(device.position), failure is None)
        with self._lock:
            if failure is None:
                device.failures = 0
                return
            device.failures += 1
            if device.failures < self.settings.vulkan_max_failures or device.disabled:
                return
            device.disabled = f"{device.failures} consecutive Vulkan failures, last: {failure}"
            left = any(other.usable(self.settings.accel) for other in self.devices)
            if not left:
                self.vulkan_disabled = device.disabled
            self._announce = True
        self.metrics.device_available.labels(str(device.position)).set(0)
        log.error("Vulkan device %d (%s, vulkan=vk:%s) disabled until the worker restarts: %s", device.position,
                  device.info.device, device.info.index, device.disabled)
        if not left:
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
        for device in self.devices if len(self.devices) > 1 or self.vulkan_usable else []:
            self._log_device(device)

    def _log_device(self, device: Device) -> None:
        info = device.info
        state = "in use" if device.usable(self.settings.accel) else f"not used ({info.error or 'no Vulkan filter ran'})"
        log.info("Vulkan device %d (vulkan=vk:%s, %s): %s", device.position, info.index, info.device or "none", state)
        for decode_class, outcome in info.decode_probe.items():
            if outcome != "ok" and not outcome.startswith("skipped"):
                log.warning("Vulkan decode of %s on device %d %s: Vulkan decode off for %s there", decode_class,
                            device.position, outcome, decode_class.split("/")[0] if outcome.startswith("hung")
                            else f"{decode_class} and above")


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
