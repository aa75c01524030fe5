"""What this worker's FFmpeg can do, probed once at start-up: version, encoders, filters, Vulkan.

The Vulkan part does not trust lists: it initialises the device (name, type, queue families) and
runs each Vulkan filter, encoder and decoder the profiles use on a few tiny frames. Only what ran
is offered to the profiles, so a filter that crashes on a driver (``nlmeans_vulkan`` on lavapipe
does) sends its profile to the CPU form from the start instead of failing every job once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter_common.profiles import BUILTIN_PROFILES, Profile
from worker.ffmpeg import die_with_parent, kill_group
from worker.ffmpeg_command import (VULKAN_DECODE_CODECS, VULKAN_ENCODERS, VULKAN_FILTERS, Plan, encoder_args,
                                   filter_chain)
from worker.media import Colour, MediaInfo

log = logging.getLogger("converter.worker")

PROBE_TIMEOUT = 30.0  # one probe command; a software Vulkan device compiles its shaders in a few seconds
NEEDED_VULKAN_FILTERS = ("scale_vulkan", *sorted({f for f in VULKAN_FILTERS.values() if f}))
DEVICE_TYPES = {"software": "cpu", "discrete": "discrete", "integrated": "integrated", "virtual": "virtual"}
_SELECTED = re.compile(r"Device \d+ selected: (?P<name>.+?) \((?P<type>[a-z ]+)\)(?: \(0x[0-9a-f]+\))?\s*$", re.M)
_QUEUE = re.compile(r"^\s*\[[^\]]+\]\s+\d+: (?P<flags>[a-z_ ]+?) \(queues: \d+\)", re.M)
TRIAL_INPUT = ["-f", "lavfi", "-i", "testsrc2=size=256x144:rate=10", "-frames:v", "3"]
TONEMAP_TRIAL_SOURCE = MediaInfo(0.3, "hevc", 256, 144, None, colour=Colour("bt2020", "smpte2084", "bt2020nc"))
REPORTED_FILTERS = {"nlmeans", "bwdif", "scale", "zscale", "tonemap", "libplacebo", *NEEDED_VULKAN_FILTERS}


@dataclass
class VulkanInfo:
    device: str = ""  # as FFmpeg names it, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)"
    type: str = ""  # discrete, integrated, virtual, cpu (lavapipe), other
    queues: list[str] = field(default_factory=list)  # queue family flags, e.g. "graphics compute transfer"
    filters: list[str] = field(default_factory=list)  # Vulkan filters that ran here
    encoders: list[str] = field(default_factory=list)  # Vulkan encoders that opened and encoded
    decode: list[str] = field(default_factory=list)  # codecs -hwaccel vulkan decoded
    error: str = ""  # why no device, when there is none

    @property
    def available(self) -> bool:
        return bool(self.device) and not self.error


@dataclass
class Capabilities:
    ffmpeg: str
    version: str = ""
    encoders: frozenset[str] = frozenset()
    filters: frozenset[str] = frozenset()
    hwaccels: frozenset[str] = frozenset()
    vulkan: VulkanInfo = field(default_factory=VulkanInfo)
    probe_seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """What the master shows in GET /api/workers; only the names that matter to the profiles."""
        wanted = {name for p in BUILTIN_PROFILES.values() for name in (p.video_codec, *p.alternative_encoders)}
        return {
            "ffmpeg": self.ffmpeg, "ffmpeg_version": self.version, "error": self.error or None,
            "encoders": sorted(self.encoders & (wanted | set(VULKAN_ENCODERS.values()))),
            "filters": sorted(self.filters & REPORTED_FILTERS),
            "vulkan": {"available": self.vulkan.available, "device": self.vulkan.device or None,
                       "type": self.vulkan.type or None, "queues": self.vulkan.queues,
                       "filters": self.vulkan.filters, "encoders": self.vulkan.encoders,
                       "decode": self.vulkan.decode, "error": self.vulkan.error or None},
            "probe_seconds": round(self.probe_seconds, 2),
        }


def select_binary(configured: str, cancel: threading.Event | None = None) -> str:
    """``auto``: the system ffmpeg unless it lacks the Vulkan filters and imageio-ffmpeg's binary has them."""
    if configured != "auto":
        return configured
    system = shutil.which("ffmpeg")
    if system and _has_vulkan_filters(system, cancel):
        return system
    try:
        import imageio_ffmpeg  # the optional extra "vulkan"
        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        bundled = None
    if bundled and _has_vulkan_filters(bundled, cancel):
        return bundled
    return system or "ffmpeg"


def probe(binary: str, *, accel: str = "auto", device: str = "0",
          cancel: threading.Event | None = None) -> Capabilities:
    """Probe ``binary`` for ``accel`` (auto|vulkan|cpu): cpu skips Vulkan, auto skips trials on a CPU device."""
    started = time.monotonic()
    caps = Capabilities(ffmpeg=binary)
    result = _run([binary, "-hide_banner", "-version"], cancel)
    if result.returncode != 0:
        caps.error = f"cannot run {binary}: {_last_line(result.stderr)}"
        caps.vulkan.error = "ffmpeg unusable"
        return caps
    caps.version = result.stdout.splitlines()[0] if result.stdout else "unknown"
    caps.encoders = _names(_run([binary, "-hide_banner", "-encoders"], cancel).stdout)
    caps.filters = _names(_run([binary, "-hide_banner", "-filters"], cancel).stdout)
    caps.hwaccels = frozenset(_run([binary, "-hide_banner", "-hwaccels"], cancel).stdout.split()[3:])
    if accel == "cpu":
        caps.vulkan.error = "accel: cpu"
    elif "scale_vulkan" not in caps.filters:
        caps.vulkan.error = "this ffmpeg has no Vulkan filters"
    else:
        caps.vulkan = _probe_vulkan(binary, device, caps, cancel, trials=accel == "vulkan")
    caps.probe_seconds = time.monotonic() - started
    return caps


def _probe_vulkan(binary: str, device: str, caps: Capabilities, cancel: threading.Event | None,
                  trials: bool) -> VulkanInfo:
    """Initialise the device; run the trials on a GPU, or on a CPU device when ``trials`` (accel: vulkan)."""
    init = [binary, "-hide_banner", "-nostdin", "-init_hw_device", f"vulkan=vk:{device}", "-filter_hw_device", "vk"]
    result = _run(init[:2] + ["-v", "verbose"] + init[2:] + ["-f", "lavfi", "-i", "nullsrc=s=64x64",
                                                             "-frames:v", "1", "-f", "null", "-"], cancel)
    selected = _SELECTED.search(result.stderr)
    if result.returncode != 0 or selected is None:
        return VulkanInfo(error=f"no Vulkan device: {_last_line(result.stderr)}")
    info = VulkanInfo(device=selected["name"], type=DEVICE_TYPES.get(selected["type"], "other"),
                      queues=[m["flags"] for m in _QUEUE.finditer(result.stderr)])
    if info.type == "cpu" and not trials:
        return info  # accel auto never uses a software device: spare the start-up the trial runs
    trials: dict[tuple[str, str], list[str]] = {}
    for name in NEEDED_VULKAN_FILTERS:
        if name in caps.filters:
            trials[("filter", name)] = TRIAL_INPUT + ["-vf", f"format=yuv420p,hwupload,{name},hwdownload,"
                                                                f"format=yuv420p", "-f", "null", "-"]
    if "libplacebo" in caps.filters:  # the tone-mapping chain the jobs run, on frames tagged PQ / BT.2020
        profile = dataclasses.replace(BUILTIN_PROFILES["h264-720p"], height=TONEMAP_TRIAL_SOURCE.height)
        chain = filter_chain(profile, TONEMAP_TRIAL_SOURCE, Plan("vulkan", "libx264"))
        pq = "setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc"
        trials[("filter", "libplacebo")] = TRIAL_INPUT + ["-vf", f"{pq},{chain}", "-f", "null", "-"]
    has_encode = any("encode" in q for q in info.queues)
    for codec, name in VULKAN_ENCODERS.items():
        if has_encode and name in caps.encoders:
            profile = next(p for p in BUILTIN_PROFILES.values() if p.codec == codec)
            trials[("encoder", name)] = TRIAL_INPUT + ["-vf", "format=nv12,hwupload"] + \
                encoder_args(name, profile, "mkv") + ["-f", "null", "-"]
    with tempfile.TemporaryDirectory(prefix="converter-probe-") as tmp:
        if any("decode" in q for q in info.queues) and "vulkan" in caps.hwaccels:
            trials.update(_decode_trials(binary, Path(tmp), caps, cancel))
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = dict(zip(trials, pool.map(lambda args: _run(init + args, cancel).returncode == 0,
                                                 trials.values())))
    info.filters = sorted(name for (kind, name), ok in outcomes.items() if kind == "filter" and ok)
    info.encoders = sorted(name for (kind, name), ok in outcomes.items() if kind == "encoder" and ok)
    info.decode = sorted(name for (kind, name), ok in outcomes.items() if kind == "decode" and ok)
    return info


def _decode_trials(binary: str, tmp: Path, caps: Capabilities,
                   cancel: threading.Event | None) -> dict[tuple[str, str], list[str]]:
    """A tiny clip per codec, decoded by ``-hwaccel vulkan`` into Vulkan frames and downloaded."""
    trials = {}
    for codec, encoder in (("h264", "libx264"), ("hevc", "libx265"), ("av1", "libsvtav1")):
        if codec not in VULKAN_DECODE_CODECS or encoder not in caps.encoders:
            continue
        clip = tmp / f"{codec}.mkv"
        made = _run([binary, "-hide_banner", "-v", "error", *TRIAL_INPUT, "-c:v", encoder, "-pix_fmt", "yuv420p",
                     str(clip)], cancel)
        if made.returncode == 0:
            trials[("decode", codec)] = ["-hwaccel", "vulkan", "-hwaccel_device", "vk", "-hwaccel_output_format",
                                         "vulkan", "-i", str(clip), "-vf", "hwdownload,format=nv12", "-f", "null", "-"]
    return trials


def _has_vulkan_filters(binary: str, cancel: threading.Event | None) -> bool:
    filters = _names(_run([binary, "-hide_banner", "-filters"], cancel).stdout)
    return all(name in filters for name in NEEDED_VULKAN_FILTERS)


def _names(listing: str) -> frozenset[str]:
    """Second column of ``-encoders`` / ``-filters`` lines (after the flags column)."""
    names = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("Encoders", "Filters", " --", "  =")):
            names.add(parts[1])
    return frozenset(names)


def _run(command: list[str], cancel: threading.Event | None, timeout: float = PROBE_TIMEOUT) \
        -> subprocess.CompletedProcess:
    """Run a probe command bounded by ``timeout`` and ``cancel``; a failure to start is a returncode of 127."""
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                   preexec_fn=die_with_parent)
    except OSError as exc:
        return subprocess.CompletedProcess(command, 127, "", str(exc))
    deadline = time.monotonic() + timeout
    while True:
        try:
            stdout, stderr = process.communicate(timeout=0.2)
            return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                kill_group(process, 1.0)
                stdout, stderr = process.communicate()
                why = "cancelled" if cancel is not None and cancel.is_set() else f"no answer in {timeout:.0f} s"
                return subprocess.CompletedProcess(command, -9, stdout, (stderr or "") + f"\n{why}")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "no message")


def profile_forms(profile: Profile, caps: Capabilities) -> list[str]:
    """``["vulkan", "cpu"]`` when the profile's Vulkan filters ran here, else ``["cpu"]``. A 10-bit profile
    is CPU only: plain scaling, where the GPU does not pay. (Tone mapping an HDR source also needs
    ``libplacebo``: ``Converter.plan`` checks that per source.)"""
    needed = {"scale_vulkan", VULKAN_FILTERS[profile.filter]} - {""}
    vulkan = caps.vulkan.available and needed <= set(caps.vulkan.filters) and profile.bit_depth == 8
    return (["vulkan"] if vulkan else []) + ["cpu"]
