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

Configured profiles (the master's ``profiles:`` mapping, docs/api.md "Profiles"): a name of the operator's, a
built-in ``base``, and the fields of ``OVERRIDABLE`` the operator sets; everything else (the encoders, the output
codec, the filter, the bit depth, ``check_only``) is the base's. ``configured_profile`` builds and checks one; the
master calls it at start-up, the worker again on the ``profile_definition`` a claim carries (``definition_of``):
every field of the effective profile the master holds, so workers need no configuration of their own.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from converter_common.protocol import PRIORITY_MAX, PRIORITY_MIN

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
    base: str = ""  # a configured profile: the built-in it is made from ("" for a built-in)


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


# -- configured profiles: a built-in base with chosen fields overridden ------------------------------------------

X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
SVTAV1_PRESETS = tuple(str(n) for n in range(14))  # SVT-AV1 0 (slowest) .. 13 (fastest); libaom uses -cpu-used 8
CONTAINERS = ("mp4", "mkv", "mov")
AUDIO_BITRATE = re.compile(r"^([1-9][0-9]{1,3})k$")  # 32k..1024k (AAC)
HEIGHT_RANGE = (16, 4320)
SKIP_BPP_MAX = 10.0
SKIP_TOLERANCE_RANGE = (0.1, 10.0)
PRIORITY_RANGE = (PRIORITY_MIN, PRIORITY_MAX)
# What a configured profile may set. A health-check base takes only ``description`` and ``priority``.
OVERRIDABLE = ("description", "height", "crf", "preset", "containers", "audio_bitrate", "audio_languages",
               "audio_channels", "subtitle_languages", "subtitles", "priority", "skip_bpp", "skip_tolerance",
               "discard_larger", "upscale", "hdr")
CHECK_ONLY_OVERRIDABLE = ("description", "priority")


class ProfileDefinitionError(ValueError):
    """A configured profile's definition is wrong; ``problems`` holds one ``(field, message)`` pair per mistake."""

    def __init__(self, name: str, problems: list[tuple[str, str]]):
        self.name = name
        self.problems = problems
        super().__init__("; ".join(f"{name}.{field}: {message}" for field, message in problems))


def configured_profile(name: str, definition: Mapping[str, Any]) -> Profile:
    """The profile ``name`` made of ``definition``: ``base`` (a built-in name) and any fields of ``OVERRIDABLE``
    (a health-check base: ``CHECK_ONLY_OVERRIDABLE``). Every mistake (an unknown field, a wrong type, a value out
    of range, a track rule) is collected; ``ProfileDefinitionError`` lists them all, one line each."""
    problems: list[tuple[str, str]] = []
    if not isinstance(name, str) or not PROFILE_NAME.match(name):
        problems.append(("name", f"{name!r} is not a profile name (1-64 of a-z, 0-9, '.', '_', '-', starting with a "
                                 "letter or digit)"))
    if not isinstance(definition, Mapping):
        raise ProfileDefinitionError(str(name), problems + [("definition", "must be a mapping of fields")])
    base_name = definition.get("base")
    if base_name not in BUILTIN_PROFILES:
        problems.append(("base", "is required" if base_name is None else
                         f"unknown built-in profile {base_name!r} (built-in: {', '.join(BUILTIN_PROFILES)})"))
        raise ProfileDefinitionError(str(name), problems)
    base = BUILTIN_PROFILES[base_name]
    allowed = CHECK_ONLY_OVERRIDABLE if base.check_only else OVERRIDABLE
    fields: dict[str, Any] = {}
    for field, value in definition.items():
        if field in ("base", "name"):
            continue
        if field not in allowed:
            why = f"a {base_name} base takes only {', '.join(allowed)}" if field in OVERRIDABLE else \
                f"unknown field (known: base, {', '.join(allowed)})"
            problems.append((str(field), why))
            continue
        try:
            fields[field] = _checked(field, value, base)
        except ValueError as exc:
            problems.append((field, str(exc)))
    if "description" not in fields:  # what it changes: GET /api/profiles and converterctl show it
        changes = "; ".join(f"{field} {', '.join(map(str, value)) if isinstance(value, tuple) else value}"
                            for field, value in fields.items())
        fields["description"] = f"{base_name} with {changes}" if changes else f"as {base_name}: {base.description}"
    if problems:
        raise ProfileDefinitionError(str(name), problems)
    return dataclasses.replace(base, name=name, base=base_name, **fields)


def definition_of(profile: Profile) -> dict[str, Any]:
    """What a claim carries of a configured profile (``protocol.PROFILE_DEFINITION``): its base and the effective
    value of every field a definition may set, JSON-ready; ``configured_profile`` turns it back into ``profile``."""
    fields = CHECK_ONLY_OVERRIDABLE if profile.check_only else OVERRIDABLE
    data: dict[str, Any] = {"name": profile.name, "base": profile.base or profile.name}
    for field in fields:
        value = getattr(profile, field)
        data[field] = list(value) if isinstance(value, tuple) else value
    return data


def _checked(field: str, value: Any, base: Profile) -> Any:
    """``value`` for ``field`` of a profile derived from ``base``, as the Profile holds it; ValueError says why not."""
    def integer(low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}, got {value}")
        return value

    def number(low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be {low:g}..{high:g}, got {value!r}")
        return float(value)

    def flag() -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    def one_of(choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def languages() -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of ISO 639-2 codes (e.g. [jpn, eng]), got {value!r}")
        bad = [code for code in value if not isinstance(code, str) or not LANGUAGE_CODE.match(code)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an ISO 639-2 code (three lower-case letters, e.g. 'eng')")
        if len(set(value)) != len(value):
            raise ValueError("lists a language twice")
        return tuple(value)

    if field == "description":
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError("must be a non-empty string of at most 200 characters")
        return value
    if field == "height":
        height = integer(*HEIGHT_RANGE)
        if height % 2:
            raise ValueError(f"must be even (4:2:0), got {height}")
        return height
    if field == "crf":
        return integer(0, 63 if base.codec == "av1" else 51)
    if field == "preset":
        if base.video_codec == "libsvtav1":
            value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            return one_of(SVTAV1_PRESETS)
        return one_of(X26X_PRESETS)
    if field == "containers":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"must be a non-empty list of {', '.join(base.containers)} (the first is the default "
                             f"output's), got {value!r}")
        for container in value:
            if container not in base.containers:
                raise ValueError(f"{container!r} is not a container of {base.name} ({', '.join(base.containers)})")
        if len(set(value)) != len(value):
            raise ValueError("lists a container twice")
        return tuple(value)
    if field == "audio_bitrate":
        match = AUDIO_BITRATE.match(value) if isinstance(value, str) else None
        if match is None or not 32 <= int(match.group(1)) <= 1024:
            raise ValueError(f"must be 32k..1024k (e.g. 192k), got {value!r}")
        return value
    if field in ("audio_languages", "subtitle_languages"):
        return languages()
    if field == "audio_channels":
        if isinstance(value, bool) or value not in AUDIO_CHANNELS:
            raise ValueError(f"must be one of {', '.join(map(str, AUDIO_CHANNELS))} (0: keep), got {value!r}")
        return value
    if field == "subtitles":
        return one_of(SUBTITLE_POLICIES)
    if field == "priority":
        return integer(*PRIORITY_RANGE)
    if field == "skip_bpp":
        return number(0.0, SKIP_BPP_MAX)
    if field == "skip_tolerance":
        return number(*SKIP_TOLERANCE_RANGE)
    if field in ("discard_larger", "upscale"):
        return flag()
    if field == "hdr":
        policy = one_of(HDR_POLICIES)
        if policy == "keep" and base.bit_depth < 10:
            tens = [p.name for p in BUILTIN_PROFILES.values() if p.bit_depth == 10]
            raise ValueError(f"keep needs a 10-bit base ({', '.join(tens)}); {base.name} is {base.bit_depth}-bit")
        return policy
    raise ValueError("unknown field")  # not reached: OVERRIDABLE lists the fields above
