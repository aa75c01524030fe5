import ast
from pathlib import Path

import pytest

from converter_common.profiles import BUILTIN_PROFILES
from worker import ffmpeg, ffmpeg_command
from worker.errors import FatalError


def test_h264_720p_command():
    args = ffmpeg_command.build_command("ffmpeg", BUILTIN_PROFILES["h264-720p"], Path("/c/source.mkv"), Path("/c/output.mp4"))
    assert args[0] == "ffmpeg" and args[-1] == "/c/output.mp4"
    joined = " ".join(args)
    for part in ("-i /c/source.mkv", "-c:v libx264", "scale=-2:720", "-c:a aac", "-movflags +faststart",
                 "-progress pipe:1", "-map 0:a:0?"):
        assert part in joined


def test_mkv_output_has_no_mp4_flags():
    args = ffmpeg_command.build_command("ffmpeg", BUILTIN_PROFILES["h264-720p"], Path("s.mp4"), Path("o.mkv"))
    assert "-movflags" not in args


def test_unknown_profile_is_fatal():
    with pytest.raises(FatalError):
        ffmpeg.profile_named("h266-16k")


def worker_imports(module: str) -> set[str]:
    """The worker modules ``module`` imports, at any level (TYPE_CHECKING blocks included)."""
    tree = ast.parse((Path(ffmpeg.__file__).parent / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "worker":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker."):
            names.add(node.module.removeprefix("worker."))
    return names


def test_the_command_builder_and_the_ffmpeg_runner_import_no_circle():
    """ffmpeg (runner, probe, output check) uses ffmpeg_command; neither it nor media looks back."""
    assert "ffmpeg_command" in worker_imports("ffmpeg")
    assert worker_imports("ffmpeg_command") == {"media"}
    assert worker_imports("media") == set()
