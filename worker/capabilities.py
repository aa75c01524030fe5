"""What this worker's FFmpeg can do, probed once at start-up: version, encoders, filters, Vulkan.

The Vulkan part does not trust lists: it initialises the device (name, type, queue families) and
runs each Vulkan filter, encoder and decoder the profiles use on a few tiny frames. Only what ran
is offered to the profiles, so a filter that crashes on a driver (``nlmeans_vulkan`` on lavapipe
does) sends its profile to the CPU form from the start instead of failing every job once.

Vulkan decode is proven per class, codec / bit depth / size (``hevc/10bit/uhd``), on a sample of a few
frames made here, each decode under a short watchdog (a 4K decode once hung an H200 for good): a class
that fails is off, and so are the classes above it; a hang turns the whole codec off on that device.
Several devices (``ffmpeg.vulkan_devices``) are probed one after the other, each on its own.
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
DECODE_PROBE_TIMEOUT = 10.0  # one decode of a few frames; a GPU takes well under a second
NEEDED_VULKAN_FILTERS = ("scale_vulkan", *sorted({f for f in VULKAN_FILTERS.values() if f}))
DEVICE_TYPES = {"software": "cpu", "discrete": "discrete", "integrated": "integrated", "virtual": "virtual"}
_SELECTED = re.compile(r"Device \d+ selected: (?P<name>.+?) \((?P<type>[a-z ]+)\)(?: \(0x[0-9a-f]+\))?\s*$", re.M)
_QUEUE = re.compile(r"^\s*\[[^\]]+\]\s+\d+: (?P<flags>[a-z_ ]+?) \(queues: \d+\)", re.M)
TRIAL_INPUT = ["-f", "lavfi", "-i", "testsrc2=size=256x144:rate=10", "-frames:v", "3"]
TONEMAP_TRIAL_SOURCE = MediaInfo(0.3, "hevc", 256, 144, None, colour=Colour("bt2020", "smpte2084", "bt2020nc"))
REPORTED_FILTERS = {"nlmeans", "bwdif", "scale", "zscale", "tonemap", "libplacebo", *NEEDED_VULKAN_FILTERS}
_LISTED = re.compile(r"^.*?\s(?P<index>\d+): (?P<name>.+?) \((?P<type>[a-z ]+)\)(?: \(0x[0-9a-f]+\))?\s*$")
# codec -> (encoder, options) that make its decode samples
DECODE_SAMPLES = {"h264": ("libx264", ["-preset", "ultrafast"]),
                  "hevc": ("libx265", ["-preset", "ultrafast", "-x265-params", "log-level=error"]),
                  "av1": ("libsvtav1", ["-preset", "12"])}
SIZE_CLASSES = {"hd": "1920x1080", "uhd": "3840x2160"}  # the sample's size: the largest of its class
SAMPLE_PIX_FMTS = {8: "yuv420p", 10: "yuv420p10le"}
DOWNLOAD_FORMATS = {8: "nv12", 10: "p010le"}  # what a Vulkan decoder's frames hold
DECODE_ORDER = ((8, "hd"), (8, "uhd"), (10, "hd"), (10, "uhd"))  # each class is tried only once those below pass


@dataclass
class VulkanInfo:
    index: str = "0"  # as -init_hw_device vulkan=vk:<index> selects it
    device: str = ""  # as FFmpeg names it, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)"
    type: str = ""  # discrete, integrated, virtual, cpu (lavapipe), other
    queues: list[str] = field(default_factory=list)  # queue family flags, e.g. "graphics compute transfer"
    filters: list[str] = field(default_factory=list)  # Vulkan filters that ran here
    encoders: list[str] = field(default_factory=list)  # Vulkan encoders that opened and encoded
    decode: list[str] = field(default_factory=list)  # codecs -hwaccel vulkan decoded in at least one class
    decode_probe: dict[str, str] = field(default_factory=dict)  # class -> ok / failed: … / hung: … / skipped: …
    error: str = ""  # why no device, when there is none

    @property
    def available(self) -> bool:
        return bool(self.device) and not self.error

    def decodes(self, decode_class: str) -> bool:
        """True when the probe decoded a sample of this class (``decode_class()``) here."""
        return self.decode_probe.get(decode_class) == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "index": self.index, "device": self.device or None,
                "type": self.type or None, "queues": self.queues, "filters": self.filters,
                "encoders": self.encoders, "decode": self.decode, "decode_probe": self.decode_probe,
                "error": self.error or None}


@dataclass
class Capabilities:
    ffmpeg: str
    version: str = ""
    encoders: frozenset[str] = frozenset()
    filters: frozenset[str] = frozenset()
    hwaccels: frozenset[str] = frozenset()
    vulkan: VulkanInfo = field(default_factory=VulkanInfo)  # the first device
    devices: list[VulkanInfo] = field(default_factory=list)  # one per ffmpeg.vulkan_devices entry, in order
    probe_seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """What the master shows in GET /api/workers; only the names that matter to the profiles."""
        wanted = {name for p in BUILTIN_PROFILES.values() for name in (p.video_codec, *p.alternative_encoders)}
        return {
            "ffmpeg": self.ffmpeg, "ffmpeg_version": self.version, "error": self.error or None,
            "encoders": sorted(self.encoders & (wanted | set(VULKAN_ENCODERS.values()))),
            "filters": sorted(self.filters & REPORTED_FILTERS),
            "vulkan": self.vulkan.to_dict(),
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


def probe(binary: str, *, accel: str = "auto", devices: str | tuple[int, ...] = "auto", decode: bool = True,
          decode_timeout: float = DECODE_PROBE_TIMEOUT, cancel: threading.Event | None = None) -> Capabilities:
    """Probe ``binary`` for ``accel`` (auto|vulkan|cpu): cpu skips Vulkan, auto skips trials on a CPU device.
    ``devices``: Vulkan indices, or auto (every GPU listed; the first device when there is none)."""
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
        listed, error = _list_devices(binary, cancel)
        probed: dict[str, VulkanInfo] = {}  # an index named twice is probed once
        for index in select_devices(devices, listed) if not error else ["0"]:
            if index not in probed:
                probed[index] = VulkanInfo(index=index, error=error) if error else _probe_vulkan(
                    binary, index, caps, cancel, trials=accel == "vulkan", decode=decode,
                    decode_timeout=decode_timeout)
            caps.devices.append(probed[index])
        caps.vulkan = caps.devices[0]
    caps.probe_seconds = time.monotonic() - started
    return caps


def select_devices(configured: str | tuple[int, ...], listed: list[tuple[str, str, str]]) -> list[str]:
    """The Vulkan indices to use: the configured ones, or (auto) every listed GPU, else the first device listed."""
    if configured != "auto":
        return [str(index) for index in configured]
    gpus = [index for index, _name, kind in listed if DEVICE_TYPES.get(kind, "other") != "cpu"]
    return gpus or [listed[0][0] if listed else "0"]


def _list_devices(binary: str, cancel: threading.Event | None) -> tuple[list[tuple[str, str, str]], str]:
    """(index, name, type) of each Vulkan device FFmpeg lists, or an error when it cannot make one."""
    result = _run([binary, "-hide_banner", "-nostdin", "-v", "verbose", "-init_hw_device", "vulkan=vk:0",
                   "-f", "lavfi", "-i", "nullsrc=s=64x64", "-frames:v", "1", "-f", "null", "-"], cancel)
    return parse_listing(result.stderr), "" if result.returncode == 0 else \
        f"no Vulkan device: {_last_line(result.stderr)}"


def parse_listing(stderr: str) -> list[tuple[str, str, str]]:
    """The ``GPU listing:`` block of FFmpeg's verbose Vulkan log."""
    _, found, rest = stderr.partition("GPU listing:")
    listed = []
    for line in rest.splitlines()[1:] if found else []:
        match = _LISTED.match(line)
        if match is None or " selected: " in line:
            break
        listed.append((match["index"], match["name"], match["type"]))
    return listed


def _probe_vulkan(binary: str, device: str, caps: Capabilities, cancel: threading.Event | None,
                  trials: bool, decode: bool = True, decode_timeout: float = DECODE_PROBE_TIMEOUT) -> VulkanInfo:
    """Initialise the device; run the trials on a GPU, or on a CPU device when ``trials`` (accel: vulkan)."""
    init = [binary, "-hide_banner", "-nostdin", "-init_hw_device", f"vulkan=vk:{device}", "-filter_hw_device", "vk"]
    result = _run(init[:2] + ["-v", "verbose"] + init[2:] + ["-f", "lavfi", "-i", "nullsrc=s=64x64",
                                                             "-frames:v", "1", "-f", "null", "-"], cancel)
    selected = _SELECTED.search(result.stderr)
    if result.returncode != 0 or selected is None:
        return VulkanInfo(index=device, error=f"no Vulkan device {device}: {_last_line(result.stderr)}")
    info = VulkanInfo(index=device, device=selected["name"], type=DEVICE_TYPES.get(selected["type"], "other"),
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
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip(trials, pool.map(lambda args: _run(init + args, cancel).returncode == 0,
                                             trials.values())))
    info.filters = sorted(name for (kind, name), ok in outcomes.items() if kind == "filter" and ok)
    info.encoders = sorted(name for (kind, name), ok in outcomes.items() if kind == "encoder" and ok)
    if decode and "vulkan" in caps.hwaccels:
        with tempfile.TemporaryDirectory(prefix="converter-probe-") as tmp:
            info.decode_probe = _decode_probe(init, Path(tmp), caps, cancel, decode_timeout)
        info.decode = sorted({key.split("/")[0] for key, outcome in info.decode_probe.items() if outcome == "ok"})
    return info


def decode_class(codec: str | None, pix_fmt: str | None, width: int | None, height: int | None) -> str:
    """``hevc/10bit/uhd``: what the decode probe proves. ``hd`` is up to 1920x1080 (either way round). The samples
    are 4:2:0, so another or an unknown pixel format makes a class no probe proves (``h264/yuv422p/hd``)."""
    small, large = sorted((width or 0, height or 0))
    size = "hd" if large <= 1920 and small <= 1080 else "uhd"
    fmt = pix_fmt or "unknown"
    depth = re.fullmatch(r"(?:yuvj?420p|nv12|p0(\d\d)le|yuv420p(\d\d)le)", fmt)
    bits = f"{int(depth[1] or depth[2] or 8)}bit" if depth else fmt
    return f"{codec}/{bits}/{size}"


def _decode_probe(init: list[str], tmp: Path, caps: Capabilities, cancel: threading.Event | None,
                  timeout: float) -> dict[str, str]:
    """Each codec's classes in ``DECODE_ORDER`` (codecs side by side), a sample of each decoded into Vulkan
    frames and downloaded under ``timeout``."""
    codecs = [codec for codec in VULKAN_DECODE_CODECS if DECODE_SAMPLES[codec][0] in caps.encoders]
    with ThreadPoolExecutor(max_workers=3) as pool:
        per_codec = list(pool.map(lambda codec: _decode_codec(init, tmp, codec, cancel, timeout), codecs))
    return {key: outcome for outcomes in per_codec for key, outcome in outcomes.items()}


def _decode_codec(init: list[str], tmp: Path, codec: str, cancel: threading.Event | None,
                  timeout: float) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for depth, size in DECODE_ORDER:
        key = f"{codec}/{depth}bit/{size}"
        blocker = decode_blocker(outcomes, codec, depth, size)
        sample = None if blocker else _decode_sample(init[0], tmp, codec, depth, size, cancel)
        if blocker or isinstance(sample, str):
            outcomes[key] = f"skipped: {blocker or sample}"
            continue
        result = _run(init + ["-nostats", "-hwaccel", "vulkan", "-hwaccel_device", "vk", "-hwaccel_output_format",
                              "vulkan", "-i", str(sample), "-vf", f"hwdownload,format={DOWNLOAD_FORMATS[depth]}",
                              "-f", "null", "-"], cancel, timeout)
        outcomes[key] = "ok" if result.returncode == 0 else \
            f"hung: no answer in {timeout:g} s" if result.returncode == -9 and not (cancel and cancel.is_set()) else \
            f"failed: {_last_line(result.stderr)}"
    return outcomes


def decode_blocker(outcomes: dict[str, str], codec: str, depth: int, size: str) -> str:
    """Why a class is not tried: its codec hung, or the class below it (smaller, or 8-bit) did not pass."""
    hung = next((key for key, outcome in outcomes.items() if outcome.startswith("hung")), None)
    if hung:
        return f"{hung} hung"
    below = f"{codec}/{depth}bit/hd" if size == "uhd" else f"{codec}/8bit/hd" if depth > 8 else None
    return f"{below} did not pass" if below and outcomes.get(below) != "ok" else ""


def _decode_sample(binary: str, tmp: Path, codec: str, depth: int, size: str,
                   cancel: threading.Event | None) -> Path | str:
    """A 3-frame sample of the class (made once per probe), or why it could not be made."""
    path = tmp / f"{codec}-{depth}-{size}.mkv"
    if path.exists():
        return path
    encoder, options = DECODE_SAMPLES[codec]
    made = _run([binary, "-hide_banner", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={SIZE_CLASSES[size]}:"
                 "rate=25", "-frames:v", "3", "-c:v", encoder, *options, "-pix_fmt", SAMPLE_PIX_FMTS[depth],
                 str(path)], cancel)
    return path if made.returncode == 0 else f"no sample ({encoder}: {_last_line(made.stderr)})"


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
    """FFmpeg's last word, skipping its closing ``Conversion failed!`` that says nothing of why."""
    return next((line.strip() for line in reversed(text.splitlines())
                 if line.strip() and line.strip() != "Conversion failed!"), "no message")


def profile_forms(profile: Profile, caps: Capabilities, device: VulkanInfo | None = None) -> list[str]:
    """``["vulkan", "cpu"]`` when the profile's Vulkan filters ran here (on ``device``, else the first), else
    ``["cpu"]``. A 10-bit profile is CPU only: plain scaling, where the GPU does not pay. (Tone mapping an HDR
    source also needs ``libplacebo``: ``Converter.plan`` checks that per source.)"""
    device = device or caps.vulkan
    if profile.check_only:  # a health check decodes: on Vulkan where the probe decoded a class on the device
        return (["vulkan"] if device.available and device.decode else []) + ["cpu"]
    needed = {"scale_vulkan", VULKAN_FILTERS[profile.filter]} - {""}
    vulkan = device.available and needed <= set(device.filters) and profile.bit_depth == 8
    return (["vulkan"] if vulkan else []) + ["cpu"]
