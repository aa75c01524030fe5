"""Profile → FFmpeg argument list, in a Vulkan form and a CPU form. The only place that builds one.

The CPU form decodes, filters and encodes in software. The Vulkan form uploads the decoded frames
(``hwupload``) or decodes with ``-hwaccel vulkan`` when asked and supported, runs the profile's
filters as Vulkan filters (``nlmeans_vulkan``, ``bwdif_vulkan``, ``scale_vulkan``), then either
encodes with a Vulkan encoder the probe found working or downloads the frames for the CPU encoder.
Both forms produce the same size, pixel format and streams, so the output check is the same.

HDR (the profile's ``hdr`` policy, ``converter_common.profiles``): a PQ or HLG source going to an SDR
output is tone-mapped with the Hable filmic curve, ``peak`` taken from the source's HDR10 metadata
(else the transfer's nominal peak). The CPU form linearises with ``zscale`` (1.0 = 100 cd/m²), converts
BT.2020 to BT.709 primaries in linear light, applies ``tonemap=hable`` and re-encodes BT.709; the
Vulkan form does the same in one ``libplacebo`` pass (scale + tone map + gamut + format), with its
dynamic peak detection off so both forms give the same picture (docs/gpu.md has the measured luma).
SDR outputs are tagged BT.709; a kept HDR output carries the source's tags and HDR10 metadata.

Track rules (``audio_languages``, ``audio_channels``, ``subtitle_languages``; "track rules" in
``converter_common.profiles``) need the probe's per-stream languages: they map the kept streams one by one
(``-map 0:a:2 -map 0:a:0``), mark the first kept audio default and the others not (``-disposition:a:N``), and
downmix per output stream (``-ac:a:N``). Without a probe the command keeps the first audio stream, as before.
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
# ISO 639-2 bibliographic codes and their terminology twins: a profile's "fre" keeps a track tagged "fra"
LANGUAGE_TWINS = {"alb": "sqi", "arm": "hye", "baq": "eus", "bur": "mya", "chi": "zho", "cze": "ces", "dut": "nld",
                  "fre": "fra", "geo": "kat", "ger": "deu", "gre": "ell", "ice": "isl", "mac": "mkd", "mao": "mri",
                  "may": "msa", "per": "fas", "rum": "ron", "slo": "slk", "tib": "bod", "wel": "cym"}
PIX_FMT = "yuv420p"
PIX_FMTS = {8: PIX_FMT, 10: "yuv420p10le"}
HDR_UPLOAD_FORMAT = "yuv420p10le"  # what an HDR source is uploaded as: 8 bits would band before tone mapping
TONEMAP_CURVE = "hable"
SDR_TAGS = ("bt709", "bt709", "bt709")  # primaries, transfer, matrix
CPU_TONEMAP = ("zscale=w={w}:h={h}:t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,"
               "tonemap=tonemap={curve}:desat=0,zscale=t=bt709:m=bt709:r=tv")
VULKAN_TONEMAP = ("tonemapping={curve}:peak_detect=0:colorspace=bt709:color_primaries=bt709:color_trc=bt709:"
                  "range=tv")
# after tone mapping: an SDR output must not carry the source's HDR10 metadata (FFmpeg 7+ encoders write it out)
DROP_HDR_METADATA = "sidedata=mode=delete:type=MASTERING_DISPLAY_METADATA,sidedata=mode=delete:type=CONTENT_LIGHT_LEVEL"
# ffprobe's matrix names → vf_scale's, for SDR sources whose matrix is not BT.709 (SD video: BT.601)
SCALE_MATRICES = {"smpte170m": "smpte170m", "bt470bg": "bt470", "fcc": "fcc", "smpte240m": "smpte240m",
                  "bt2020nc": "bt2020"}


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


def tone_maps(profile: Profile, info: MediaInfo | None) -> bool:
    """True when this source is HDR and the profile's output is SDR: only then does tone mapping run."""
    return profile.hdr == "tonemap" and info is not None and info.colour.hdr is not None


def keeps_hdr(profile: Profile, info: MediaInfo | None) -> bool:
    return profile.hdr == "keep" and info is not None and info.colour.hdr is not None


def pix_fmt(profile: Profile) -> str:
    return PIX_FMTS[profile.bit_depth]


def filter_chain(profile: Profile, info: MediaInfo | None, plan: Plan) -> str:
    size = output_size(profile, info) or (-2, profile.height)
    options = FILTER_OPTIONS.get(profile.filter, "")
    if plan.accel != "vulkan":
        steps = [f"{CPU_FILTERS[profile.filter]}={options}"] if profile.filter else []
        steps += [_cpu_scale(profile, info, size), f"format={pix_fmt(profile)}"]
        return ",".join(steps + _finish(profile, info))
    placebo = tone_maps(profile, info) or profile.bit_depth > 8  # scale_vulkan is 8-bit
    upload = HDR_UPLOAD_FORMAT if placebo else PIX_FMT
    steps = [] if plan.vulkan_decode else [f"format={upload}", "hwupload"]
    if profile.filter:
        steps.append(f"{VULKAN_FILTERS[profile.filter]}={options}")
    if placebo:
        sw_format = pix_fmt(profile)
        tonemap = ":" + VULKAN_TONEMAP.format(curve=TONEMAP_CURVE) if tone_maps(profile, info) else ""
        steps.append(f"libplacebo=w={size[0]}:h={size[1]}{tonemap}:format={sw_format}")
    else:
        sw_format = "nv12" if plan.vulkan_decode else PIX_FMT
        steps.append(f"scale_vulkan=w={size[0]}:h={size[1]}:format={sw_format}")
    if not plan.encoder.endswith("_vulkan"):
        steps += ["hwdownload", f"format={sw_format}", f"format={pix_fmt(profile)}"]
    return ",".join(steps + _finish(profile, info))


def _finish(profile: Profile, info: MediaInfo | None) -> list[str]:
    """Frame properties as the output is tagged: FFmpeg 9 takes the transfer and primaries from the frames, over
    ``-color_trc``/``-color_primaries`` (5.1 from the options: ``colour_args`` sets both)."""
    tags = "setparams=color_primaries={}:color_trc={}:colorspace={}".format(*output_colour(profile, info))
    return ([DROP_HDR_METADATA] if tone_maps(profile, info) else []) + [tags, "setsar=1"]


def _cpu_scale(profile: Profile, info: MediaInfo | None, size: tuple[int, int]) -> str:
    """Scale, and bring the colours to what the output is tagged (docstring of converter_common.profiles)."""
    if tone_maps(profile, info):
        return CPU_TONEMAP.format(w=size[0], h=size[1], curve=TONEMAP_CURVE)
    matrix = SCALE_MATRICES.get(info.colour.matrix or "") if info is not None else None
    if matrix is None or keeps_hdr(profile, info):
        return f"scale={size[0]}:{size[1]}"
    return f"scale={size[0]}:{size[1]}:in_color_matrix={matrix}:out_color_matrix=bt709"


def output_colour(profile: Profile, info: MediaInfo | None) -> tuple[str, str, str]:
    """(primaries, transfer, matrix) of the output: the source's for a kept HDR output, BT.709 for every SDR one."""
    if keeps_hdr(profile, info):
        return info.colour.primaries or "bt2020", info.colour.transfer, info.colour.matrix or "bt2020nc"
    return SDR_TAGS


def colour_args(profile: Profile, info: MediaInfo | None) -> list[str]:
    primaries, transfer, matrix = output_colour(profile, info)
    return ["-color_primaries", primaries, "-color_trc", transfer, "-colorspace", matrix]


def x265_hdr10_params(profile: Profile, info: MediaInfo | None) -> list[str]:
    """x265's HDR10 SEI (mastering display, content light level) for a kept PQ source that has them."""
    if not keeps_hdr(profile, info) or info.colour.hdr != "PQ":
        return []
    params = ["hdr10=1"]
    mastering = info.colour.mastering
    if mastering is not None:
        points = "".join(f"{name}({x},{y})" for name, (x, y) in (("G", mastering.green), ("B", mastering.blue),
                                                                 ("R", mastering.red), ("WP", mastering.white)))
        params.append(f"master-display={points}L({mastering.max_luminance},{mastering.min_luminance})")
    if info.colour.light_level is not None:
        params.append("max-cll={},{}".format(*info.colour.light_level))
    return params


def encoder_args(encoder: str, profile: Profile, container: str, info: MediaInfo | None = None) -> list[str]:
    """Video encoder options: the profile's quality and speed in the words each encoder takes."""
    if encoder.endswith("_vulkan"):
        args = ["-c:v", encoder, "-rc_mode", "cqp", "-qp", str(profile.crf)]
    elif encoder == "libaom-av1":
        args = ["-c:v", encoder, "-cpu-used", "8", "-row-mt", "1", "-crf", str(profile.crf), "-b:v", "0"]
    else:
        args = ["-c:v", encoder, "-preset", profile.preset, "-crf", str(profile.crf)]
    if encoder == "libx265":
        args += ["-x265-params", ":".join(["log-level=error", *x265_hdr10_params(profile, info)])]
    if not encoder.endswith("_vulkan"):
        args += ["-pix_fmt", pix_fmt(profile)]
    if profile.codec == "hevc" and container in ("mp4", "mov"):
        args += ["-tag:v", "hvc1"]  # what Apple players expect
    return args


def language_key(code: str) -> str:
    return LANGUAGE_TWINS.get(code, code)


def select_tracks(languages: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    """Indices of the streams (tagged ``languages``, in stream order) that ``wanted`` keeps, in its order and then
    stream order; every index when ``wanted`` is empty."""
    if not wanted:
        return list(range(len(languages)))
    keys = [language_key(code) for code in languages]
    order = list(dict.fromkeys(language_key(code) for code in wanted))
    return [index for key in order for index, code in enumerate(keys) if code == key]


def audio_tracks(profile: Profile, info: MediaInfo | None) -> list[int] | None:
    """The source's audio streams the output keeps, in output order; None without a probe (the first, if any).
    A source with none of the profile's languages keeps all its audio: never a silent output by a rule."""
    if info is None:
        return None
    languages = info.audio_languages or ("und",) * info.audio_streams
    return select_tracks(languages, profile.audio_languages) or list(range(info.audio_streams))


def audio_maps(profile: Profile, info: MediaInfo | None) -> list[str]:
    """Every audio stream, or the profile's languages in its order; without a probe the first one, if any."""
    tracks = audio_tracks(profile, info)
    if tracks is None:
        return ["-map", "0:a:0?"]
    if not profile.audio_languages:
        return ["-map", "0:a?"]
    return [arg for index in tracks for arg in ("-map", f"0:a:{index}")]


def audio_args(profile: Profile, info: MediaInfo | None) -> list[str]:
    """Encode, mark the default and downmix the audio streams ``audio_maps`` kept, per the profile's track rules."""
    tracks = audio_tracks(profile, info)
    args = ["-c:a", profile.audio_codec, "-b:a", profile.audio_bitrate]
    if tracks and profile.audio_languages:
        for out in range(len(tracks)):
            args += [f"-disposition:a:{out}", "default" if out == 0 else "0"]
    if profile.audio_channels:
        channels = info.audio_channels if info is not None else ()
        for out, index in enumerate(tracks if tracks is not None else [0]):
            if index >= len(channels) or not channels[index] or channels[index] > profile.audio_channels:
                args += [f"-ac:a:{out}", str(profile.audio_channels)]
    return args


def subtitle_args(profile: Profile, info: MediaInfo | None, container: str) -> list[str]:
    """Map and convert subtitle streams per the profile's policy (module docstring of converter_common.profiles)."""
    if profile.subtitles != "keep" or info is None:
        return []
    args: list[str] = []
    kept = 0
    languages = info.subtitle_languages or ("und",) * len(info.subtitle_codecs)
    for index in select_tracks(languages, profile.subtitle_languages):
        codec = info.subtitle_codecs[index]
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
    args += ["-i", str(source), "-map", "0:v:0", *audio_maps(profile, info)]
    args += ["-vf", filter_chain(profile, info, plan)]
    args += encoder_args(plan.encoder or profile.video_codec, profile, container, info)
    args += colour_args(profile, info)
    args += audio_args(profile, info)
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
