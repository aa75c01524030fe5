"""What a probe found in a media file: the input of the FFmpeg command builder and of the output check."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    video_codec: str | None
    width: int | None
    height: int | None
    audio_codec: str | None
    audio_streams: int = 0
    subtitle_codecs: tuple[str, ...] = ()
    pix_fmt: str | None = None
    sample_aspect: float = 1.0
    rotation: int = 0  # degrees from the display matrix; 90/270 swap the displayed width and height

    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: pixel aspect applied, rotation applied."""
        width, height = round((self.width or 0) * self.sample_aspect), self.height or 0
        return (height, width) if self.rotation % 180 == 90 else (width, height)
