"""What a probe found in a media file: the input of the FFmpeg command builder and of the output check."""

from __future__ import annotations

from dataclasses import dataclass

HDR_TRANSFERS = {"smpte2084": "PQ", "arib-std-b67": "HLG"}


@dataclass(frozen=True)
class MasteringDisplay:
    """SMPTE ST 2086 mastering display colour volume, in the units of HEVC's SEI and x265's ``master-display``:
    CIE 1931 (x, y) chromaticities in 1/50000, luminance in 1/10000 cd/m²."""

    red: tuple[int, int]
    green: tuple[int, int]
    blue: tuple[int, int]
    white: tuple[int, int]
    max_luminance: int
    min_luminance: int


@dataclass(frozen=True)
class Colour:
    """The first video stream's colour description, with ffprobe's names (``bt709``, ``bt2020nc``, ``smpte2084``)."""

    primaries: str | None = None
    transfer: str | None = None
    matrix: str | None = None
    mastering: MasteringDisplay | None = None
    light_level: tuple[int, int] | None = None  # (MaxCLL, MaxFALL) in cd/m²
    dolby_vision: str | None = None  # e.g. "profile 8, level 6": reported only; the base layer is what converts

    @property
    def hdr(self) -> str | None:
        """``"PQ"`` (HDR10 and the like) or ``"HLG"`` from the transfer function; None for SDR."""
        return HDR_TRANSFERS.get(self.transfer or "")

    def describe(self) -> str:
        """For the log: ``HDR PQ (bt2020, mastering 0.0001-1000 cd/m², MaxCLL 1000, MaxFALL 400)``."""
        if self.hdr is None:
            vision = f", Dolby Vision {self.dolby_vision}" if self.dolby_vision else ""
            return f"SDR ({self.primaries or 'untagged'}{vision})"
        facts = [self.primaries or "untagged primaries"]
        if self.mastering:
            facts.append(f"mastering {self.mastering.min_luminance / 10000:g}-"
                         f"{self.mastering.max_luminance / 10000:g} cd/m²")
        if self.light_level:
            facts.append(f"MaxCLL {self.light_level[0]}, MaxFALL {self.light_level[1]}")
        if self.dolby_vision:
            facts.append(f"Dolby Vision {self.dolby_vision}")
        return f"HDR {self.hdr} ({', '.join(facts)})"


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
    colour: Colour = Colour()
    # per audio / subtitle stream, in stream order: the language tag in lower case ("und" when untagged)
    audio_languages: tuple[str, ...] = ()
    audio_channels: tuple[int, ...] = ()  # per audio stream; 0 when unknown
    subtitle_languages: tuple[str, ...] = ()

    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: pixel aspect applied, rotation applied."""
        width, height = round((self.width or 0) * self.sample_aspect), self.height or 0
        return (height, width) if self.rotation % 180 == 90 else (width, height)
