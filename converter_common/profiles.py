"""Named conversion profiles: what the output should be, not how FFmpeg is called.

The master validates profile names against this table; the worker's ``worker.ffmpeg`` module
turns a profile into an FFmpeg argument list. No raw FFmpeg arguments ever come from the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Profile:
    name: str
    containers: tuple[str, ...]  # output extensions allowed (FFmpeg picks the muxer from it)
    video_codec: str  # FFmpeg encoder name
    height: int  # output height; width follows the aspect ratio, rounded to even
    crf: int
    preset: str
    audio_codec: str
    audio_bitrate: str
    description: str


BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="h264-720p",
            containers=("mp4", "mkv", "mov"),
            video_codec="libx264",
            height=720,
            crf=23,
            preset="veryfast",
            audio_codec="aac",
            audio_bitrate="128k",
            description="H.264 720p, AAC audio, MP4 (faststart)",
        ),
    )
}
