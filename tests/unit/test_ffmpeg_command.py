from pathlib import Path

import pytest

from converter_common.profiles import BUILTIN_PROFILES
from worker import ffmpeg
from worker.errors import FatalError


def test_h264_720p_command():
    args = ffmpeg.build_command("ffmpeg", BUILTIN_PROFILES["h264-720p"], Path("/c/source.mkv"), Path("/c/output.mp4"))
    assert args[0] == "ffmpeg" and args[-1] == "/c/output.mp4"
    joined = " ".join(args)
    for part in ("-i /c/source.mkv", "-c:v libx264", "scale=-2:720", "-c:a aac", "-movflags +faststart",
                 "-progress pipe:1", "-map 0:a:0?"):
        assert part in joined


def test_mkv_output_has_no_mp4_flags():
    args = ffmpeg.build_command("ffmpeg", BUILTIN_PROFILES["h264-720p"], Path("s.mp4"), Path("o.mkv"))
    assert "-movflags" not in args


def test_unknown_profile_is_fatal():
    with pytest.raises(FatalError):
        ffmpeg.profile_named("h266-16k")
