"""Profile → FFmpeg argument list, in a Vulkan form and a CPU form. The only place that builds one.

The CPU form decodes, filters and encodes in software. The Vulkan form uploads the decoded frames
(``hwupload``) or decodes with ``-hwaccel vulkan`` when asked and supported, runs the profile's
filters as Vulkan filters (``nlmeans_vulkan``, ``bwdif_vulkan``, ``scale_vulkan``), then either
encodes with a Vulkan encoder the probe found working or downloads the frames for the CPU encoder.
Both forms produce the same size, pixel format and streams, so the output check is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter_common.profiles import Profile
from worker.media import MediaInfo

VULKAN_ENCODERS = {"h264": "h264_vulkan", "hevc": "hevc_vulkan", "av1": "av1_vulkan"}
VULKAN_FILTERS = {"": "", "denoise": "nlmeans_vulkan", "deinterlace": "bwdif_vulkan"}
CPU_FILTERS = {"": "", "denoise": "nlmeans", "deinterlace": "bwdif"}
FILTER_OPTIONS = {"denoise": "s=1.0:p=7:r=15", "deinterlace": "mode=send_frame:parity=auto:deint=all"}
VULKAN_DECODE_CODECS = ("h264", "hevc", "av1")
TEXT_SUBTITLES = {"subrip", "ass", "ssa", "webvtt", "mov_text", "text"}
MKV_TEXT_SUBTITLES = {"subrip", "ass", "ssa", "webvtt"}
BITMAP_SUBTITLES = {"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle"}
PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class Plan:
    """How to run one conversion: which accel, which video encoder, and whether the GPU decodes."""

    accel: str = "cpu"  # "vulkan" or "cpu"
    encoder: str = ""  # empty: the profile's own CPU encoder
    vulkan_decode: bool = False
    vulkan_device: str = "0"


def output_size(profile: Profile, info: MediaInfo | None) -> tuple[int, int] | None:
    """Even (width, height) at the profile's height (at most, without ``upscale``), keeping the display aspect."""
    if info is None or not info.width or not info.height:
        return None
    width, height = info.display_size()
    out_h = profile.height if profile.upscale else min(profile.height, height)
    out_h -= out_h % 2
    out_w = int(width * out_h / height / 2 + 0.5) * 2  # half rounds up, like FFmpeg
    return max(out_w, 2), max(out_h, 2)


def filter_chain(profile: Profile, info: MediaInfo | None, plan: Plan) -> str:
    size = output_size(profile, info)
    options = FILTER_OPTIONS.get(profile.filter, "")
    if plan.accel != "vulkan":
        steps = [f"{CPU_FILTERS[profile.filter]}={options}"] if profile.filter else []
        steps.append(f"scale={size[0]}:{size[1]}" if size else f"scale=-2:{profile.height}")
        return ",".join(steps + [f"format={PIX_FMT}", "setsar=1"])
    steps = [] if plan.vulkan_decode else [f"format={PIX_FMT}", "hwupload"]
    if profile.filter:
        steps.append(f"{VULKAN_FILTERS[profile.filter]}={options}")
    sw_format = "nv12" if plan.vulkan_decode else PIX_FMT
    width, height = size if size else (-2, profile.height)
    steps.append(f"scale_vulkan=w={width}:h={height}:format={sw_format}")
    if not plan.encoder.endswith("_vulkan"):
        steps += ["hwdownload", f"format={sw_format}", f"format={PIX_FMT}"]
    return ",".join(steps + ["setsar=1"])


def encoder_args(encoder: str, profile: Profile, container: str) -> list[str]:
    """Video encoder options: the profile's quality and speed in the words each encoder takes."""
    if encoder.endswith("_vulkan"):
        args = ["-c:v", encoder, "-rc_mode", "cqp", "-qp", str(profile.crf)]
    elif encoder == "libaom-av1":
        args = ["-c:v", encoder, "-cpu-used", "8", "-row-mt", "1", "-crf", str(profile.crf), "-b:v", "0"]
    else:
        args = ["-c:v", encoder, "-preset", profile.preset, "-crf", str(profile.crf)]
    if encoder == "libx265":
        args += ["-x265-params", "log-level=error"]
    if not encoder.endswith("_vulkan"):
        args += ["-pix_fmt", PIX_FMT]
    if profile.codec == "hevc" and container in ("mp4", "mov"):
        args += ["-tag:v", "hvc1"]  # what Apple players expect
    return args


def subtitle_args(profile: Profile, info: MediaInfo | None, container: str) -> list[str]:
    """Map and convert subtitle streams per the profile's policy (module docstring of converter_common.profiles)."""
    if profile.subtitles != "keep" or info is None:
        return []
    args: list[str] = []
    kept = 0
    for index, codec in enumerate(info.subtitle_codecs):
        if container == "mkv":
            target = "copy" if codec in MKV_TEXT_SUBTITLES | BITMAP_SUBTITLES else "srt" if codec in TEXT_SUBTITLES \
                else None
        else:
            target = "mov_text" if codec in TEXT_SUBTITLES else None
        if target is None:
            continue
        args += ["-map", f"0:s:{index}", f"-c:s:{kept}", target]
        kept += 1
    return args


def build_command(binary: str, profile: Profile, source: Path, output: Path, *, info: MediaInfo | None = None,
                  plan: Plan = Plan()) -> list[str]:
    """The FFmpeg argument list for ``profile`` in the form ``plan`` says (the CPU form by default)."""
    container = output.suffix.lower().lstrip(".")
    args = [binary, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
    if plan.accel == "vulkan":
        args += ["-init_hw_device", f"vulkan=vk:{plan.vulkan_device}", "-filter_hw_device", "vk"]
        if plan.vulkan_decode:
            args += ["-hwaccel", "vulkan", "-hwaccel_device", "vk", "-hwaccel_output_format", "vulkan"]
    # Every audio stream; without a probe (``info`` None) the first one, if any.
    args += ["-i", str(source), "-map", "0:v:0", "-map", "0:a?" if info is not None else "0:a:0?"]
    args += ["-vf", filter_chain(profile, info, plan)]
    args += encoder_args(plan.encoder or profile.video_codec, profile, container)
    args += ["-c:a", profile.audio_codec, "-b:a", profile.audio_bitrate]
    args += subtitle_args(profile, info, container)
    args += ["-max_muxing_queue_size", "4096"]
    if container in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]
    return args + ["-progress", "pipe:1", str(output)]


def cpu_encoder(profile: Profile, encoders: frozenset[str] | None) -> str:
    """The profile's CPU encoder, or its first alternative this FFmpeg has (``encoders`` None: unknown)."""
    for name in (profile.video_codec, *profile.alternative_encoders):
        if encoders is None or name in encoders:
            return name
    return profile.video_codec
