"""Named conversion profiles: what the output should be, not how FFmpeg is called.

The master validates profile names against this table; the worker's ``worker.ffmpeg_command``
module turns a profile into an FFmpeg argument list (a Vulkan form and a CPU form). No raw FFmpeg
arguments ever come from the API.

``health-check`` (``check_only``) converts nothing: the worker decodes the whole source (``-f null``, CPU, or
Vulkan decode where the probe proved the source's class) and the job records ``health`` (``healthy``, the errors
FFmpeg reported); such a job has no output path and nothing is ever written (docs/api.md, "Health checks").

Policies shared by every built-in profile (see docs/gpu.md):

- video: the first video stream scaled to ``height`` lines (only down, never up, when ``upscale`` is
  False), the width following the display aspect ratio, both rounded to even, square pixels; 4:2:0 output at
  ``bit_depth`` bits; timestamps kept (VFR stays VFR).
- colour: ``hdr="tonemap"``: an HDR source (PQ or HLG) is tone-mapped to SDR; the output is SDR tagged BT.709
  whatever the source. ``hdr="keep"``: an HDR source stays HDR (its primaries, transfer, matrix and HDR10
  mastering display / content light level metadata are carried to the output); an SDR source is tagged BT.709.
  A source without HDR is never tone-mapped.
- audio: every audio stream, each encoded with ``audio_codec``/``audio_bitrate``; none is fine.
- subtitles: ``subtitles="keep"`` keeps text subtitles (mov_text in MP4/MOV, copied or SRT in
  MKV) and bitmap subtitles in MKV only (MP4 cannot hold them: dropped); ``"drop"`` drops all.
- track rules (every built-in keeps all tracks, as above): ``audio_languages`` (ISO 639-2 codes, e.g.
  ``("jpn", "eng")``) keeps only the audio tracks in those languages, in the order of the list (source order
  within a language), and makes the first kept one the default track. An untagged track counts as ``und``:
  it is kept only where ``und`` is in the list (at that place). A source with none of the listed languages
  keeps all its audio: a track rule never makes a silent output. ``audio_channels`` 1, 2 or 6 downmixes tracks
  with more channels (fewer stay as they are); 0 keeps every track's channels. ``subtitle_languages`` keeps
  only the subtitles in those languages, in that order (``und`` as for audio); a source with none of them
  keeps none. Bibliographic and terminology codes match each other (``fre``/``fra``, ``ger``/``deu``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FILTERS = ("", "denoise", "deinterlace")
SUBTITLE_POLICIES = ("keep", "drop")
HDR_POLICIES = ("tonemap", "keep")
LANGUAGE_CODE = re.compile(r"^[a-z]{3}$")  # ISO 639-2, lower case ("und": untagged)
AUDIO_CHANNELS = (0, 1, 2, 6)  # 0: keep each track's channels


@dataclass(frozen=True)
class Profile:
    name: str
    containers: tuple[str, ...]  # output extensions allowed (FFmpeg picks the muxer from it)
    video_codec: str  # FFmpeg CPU encoder name, the first choice
    height: int  # largest output height; width follows the aspect ratio, rounded to even
    crf: int
    preset: str
    audio_codec: str
    audio_bitrate: str
    description: str
    codec: str = "h264"  # the output's codec as ffprobe names it (checked before upload)
    priority: int = 0  # a job's priority when its submission names none (claims take the highest first)
    check_only: bool = False  # a health check: decode the source, record what FFmpeg reports, write no output
    alternative_encoders: tuple[str, ...] = ()  # CPU encoders to use when ``video_codec`` is missing
    filter: str = ""  # "", "denoise" (nlmeans) or "deinterlace" (bwdif)
    subtitles: str = "keep"
    upscale: bool = True  # False: sources shorter than ``height`` keep their height
    hdr: str = "tonemap"  # "tonemap" (to SDR BT.709) or "keep" (HDR out, metadata carried); see the module doc
    bit_depth: int = 8  # 8 or 10 (4:2:0)
    # The skip rule (converter_common/skip_rules.py): a source already in ``codec``, no taller than ``height`` and
    # at most ``skip_bpp`` x ``skip_tolerance`` video bits per pixel per frame is skipped (0: the rule is off)
    skip_bpp: float = 0.0
    skip_tolerance: float = 1.2
    discard_larger: bool = True  # an output larger than its source is discarded and the source kept as the output
    audio_languages: tuple[str, ...] = ()  # empty: every audio track; see "track rules" in the module doc
    audio_channels: int = 0  # 0: keep; 1, 2 or 6: downmix tracks with more channels to that many
    subtitle_languages: tuple[str, ...] = ()  # empty: every subtitle the container can hold


def track_rule_errors(profile: Profile) -> list[str]:
    """One line per invalid track rule of ``profile`` (empty when all are valid)."""
    errors = [f"{profile.name}: {field} {code!r} is not an ISO 639-2 code (three lower-case letters, e.g. 'eng')"
              for field in ("audio_languages", "subtitle_languages") for code in getattr(profile, field)
              if not isinstance(code, str) or not LANGUAGE_CODE.match(code)]
    if profile.audio_channels not in AUDIO_CHANNELS:
        errors.append(f"{profile.name}: audio_channels {profile.audio_channels!r} must be one of "
                      f"{', '.join(map(str, AUDIO_CHANNELS))} (0: keep)")
    return errors


def _profile(name: str, **fields) -> Profile:
    defaults = dict(containers=("mp4", "mkv", "mov"), video_codec="libx264", height=1080, crf=21,
                    preset="veryfast", audio_codec="aac", audio_bitrate="128k")
    return Profile(name=name, **{**defaults, **fields})


BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        _profile("h264-720p", height=720, crf=23, skip_bpp=0.1,
                 description="H.264 720p, AAC audio, MP4 (faststart)"),
        _profile("h264-1080p", skip_bpp=0.1, description="H.264 1080p, AAC audio"),
        _profile("hevc-1080p", video_codec="libx265", codec="hevc", crf=26, preset="fast", skip_bpp=0.06,
                 description="HEVC 1080p (hvc1 tag in MP4/MOV), AAC audio"),
        _profile("av1-1080p", containers=("mp4", "mkv"), video_codec="libsvtav1", codec="av1", crf=35, preset="8",
                 alternative_encoders=("libaom-av1",), description="AV1 1080p (SVT-AV1, else libaom), AAC audio"),
        _profile("denoise-1080p", crf=20, filter="denoise",
                 description="Non-local-means denoise (nlmeans_vulkan on a GPU), H.264 1080p, AAC audio"),
        _profile("deinterlace", crf=20, filter="deinterlace", upscale=False,
                 description="Deinterlace every frame (bwdif, one frame per frame), H.264 up to 1080p, AAC audio"),
        _profile("health-check", containers=(), check_only=True,
                 description="Decode the whole source and record whether it is healthy, with FFmpeg's errors; "
                             "no output"),
        _profile("hevc-1080p-hdr10", video_codec="libx265", codec="hevc", crf=24, preset="fast", hdr="keep",
                 bit_depth=10, description="HEVC Main10 1080p keeping HDR10 (BT.2020/PQ, mastering and light "
                                           "level metadata), AAC audio"),
    )
}
