"""A profile's skip and keep-smaller rules: pure decisions, the worker applies them (docs/api.md, "Skipped jobs").

Skip: a source whose video is already the profile's ``codec``, no taller than its ``height``, not HDR where the
profile tone-maps, and at most ``skip_bpp`` x ``skip_tolerance`` bits per pixel per frame, is left as it is: the
job ends ``skipped`` with the reason. Bits per pixel (bitrate / (width x height x frame rate)), not a bitrate:
the built-in profiles are CRF-based and have no target bitrate, and bits per pixel compares sources of any size and
frame rate against the one figure a profile's CRF typically gives (H.264 CRF 21-23: ~0.1; HEVC CRF 26: ~0.06).
Keep-smaller (``discard_larger``, on by default): any output larger than its source is discarded and the source's
bytes become the output; the job ends ``completed`` with ``kept_source`` true and the reason. That holds for an
upscale too (more pixels usually bring more bytes): a profile that upscales on purpose sets ``discard_larger: false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from converter_common.profiles import Profile

HDR_TRANSFERS = ("smpte2084", "arib-std-b67")


@dataclass(frozen=True)
class SourceFacts:
    """What the skip rule looks at: the first video stream of the source."""

    codec: str | None
    width: int
    height: int
    fps: float
    bitrate: float  # video bits per second; the whole file's when the container gives no video bitrate
    hdr: bool = False

    @property
    def bits_per_pixel(self) -> float:
        pixels = self.width * self.height * self.fps
        return self.bitrate / pixels if pixels > 0 else float("inf")


def skip_reason(profile: Profile, facts: SourceFacts | None) -> str | None:
    """Why the job needs no conversion, or None when it does (the rule is off, or the source differs)."""
    if profile.skip_bpp <= 0 or facts is None or getattr(profile, "check_only", False):
        return None
    if facts.codec != profile.codec or not facts.height or facts.height > profile.height:
        return None
    if facts.hdr and profile.hdr == "tonemap":
        return None  # the profile's output would be SDR: converting changes it
    limit = profile.skip_bpp * profile.skip_tolerance
    if not facts.bitrate or facts.bits_per_pixel > limit:
        return None
    return (f"the source is already {facts.codec} {facts.width}x{facts.height} at {facts.bitrate / 1000:.0f} kbit/s"
            f" ({facts.bits_per_pixel:.3f} bits per pixel per frame, at most {limit:.3f}): {profile.name}'s skip rule")


def keep_source_reason(profile: Profile, source_size: int, output_size: int) -> str | None:
    """Why the output is discarded and the source kept (``discard_larger``: any output larger than its source,
    upscaled or not), or None to keep the output."""
    if not profile.discard_larger or output_size <= source_size:
        return None
    return (f"the converted output ({output_size} bytes) was larger than the source ({source_size} bytes):"
            " the source was kept as the output (discard_larger)")


def facts_from_ffprobe(data: dict[str, Any], total_size: int) -> SourceFacts | None:
    """``ffprobe -show_format -show_streams`` JSON as ``SourceFacts``; None without a video stream. The video's
    bitrate is the stream's (MP4), its ``BPS`` tag (Matroska from mkvmerge), else the whole file's
    (``total_size`` over the duration: audio included, so the rule errs on converting)."""
    video = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    if video is None or not video.get("width") or not video.get("height"):
        return None
    tags = {key.upper(): value for key, value in (video.get("tags") or {}).items()}
    bitrate = _number(video.get("bit_rate")) or _number(tags.get("BPS"))
    duration = _number(data.get("format", {}).get("duration"))
    if not bitrate and duration > 0 and total_size > 0:
        bitrate = total_size * 8 / duration
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    return SourceFacts(codec=video.get("codec_name"), width=int(video["width"]), height=int(video["height"]),
                       fps=fps, bitrate=bitrate, hdr=video.get("color_transfer") in HDR_TRANSFERS)


def _number(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def _rate(value: Any) -> float:
    if not isinstance(value, str) or "/" not in value:
        return _number(value)
    num, _, den = value.partition("/")
    return _number(num) / _number(den) if _number(den) else 0.0
