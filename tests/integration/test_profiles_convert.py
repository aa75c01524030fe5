"""Every built-in profile, and the odd inputs, through the worker's Converter with the real FFmpeg.

CPU form always; Vulkan form on lavapipe (software Vulkan, ``mesa-vulkan-drivers``) where its
filters run there: the probe decides, and a profile whose Vulkan filter does not run (nlmeans_vulkan
crashes on lavapipe) must come out of the CPU form. Clips are tiny so the module stays fast.
"""

import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from tests.fixtures import ffprobe
from worker import capabilities
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.metrics import WorkerMetrics
from worker.ffmpeg_command import output_size

pytestmark = pytest.mark.integration

TINY = "192x108"


def clip(path: Path, *inputs_and_options: str, seconds: float = 2.0) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs_and_options, "-t", str(seconds), str(path)], check=True,
                   timeout=60)
    return path


def video(size=TINY, rate=10):
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]


def tone(frequency=440):
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=48000"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    h264 = ["-c:v", "libx264", "-preset", "ultrafast"]
    srt = d / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\nworld\n")
    return {
        "plain": clip(d / "plain.mp4", *video(), *tone(), *h264, "-pix_fmt", "yuv420p", "-c:a", "aac"),
        # Really 201x113 4:2:0 (testsrc2 and libx264 would round to even sizes): scaled, FFV1
        "odd": clip(d / "odd.mkv", *video("202x114"), *tone(), "-vf", "scale=201:113,setsar=1", "-c:v", "ffv1",
                    "-pix_fmt", "yuv420p", "-c:a", "aac"),
        "10bit": clip(d / "10bit.mkv", *video(), *h264, "-pix_fmt", "yuv420p10le"),
        "vfr": clip(d / "vfr.mkv", *video(rate=25), "-vf", "select='not(mod(n\\,3))+lt(n\\,10)'",
                    "-fps_mode", "vfr", *h264, "-pix_fmt", "yuv420p"),
        "no-audio": clip(d / "no-audio.mp4", *video(), *h264, "-pix_fmt", "yuv420p"),
        "two-audio": clip(d / "two-audio.mkv", *video(), *tone(440), *tone(880), "-map", "0", "-map", "1",
                          "-map", "2", *h264, "-pix_fmt", "yuv420p", "-c:a", "aac"),
        "subtitles": clip(d / "subtitles.mkv", *video(), *tone(), "-i", str(srt), "-map", "0", "-map", "1",
                          "-map", "2", *h264, "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "srt"),
    }


def start(accel, binary="ffmpeg"):
    settings = FfmpegSection(binary=binary, accel=accel, stall_timeout=60, timeout=120)
    return Converter.start(settings, WorkerMetrics(CollectorRegistry()))


@pytest.fixture(scope="module")
def cpu():
    return start("cpu")


@pytest.fixture(scope="module")
def vulkan():
    """accel: vulkan on lavapipe, with the FFmpeg that has the most Vulkan filters here (imageio-ffmpeg's if installed)."""
    converter = start("vulkan", binary=capabilities.select_binary("auto"))
    if not converter.vulkan_usable:
        pytest.skip(f"no usable Vulkan device: {converter.caps.vulkan.error}")
    assert converter.caps.vulkan.type == "cpu"  # lavapipe, reported as a CPU-type device
    return converter


def convert(converter, profile, source, output):
    return converter.convert(BUILTIN_PROFILES[profile], source, output, threading.Event(), label="test")


def streams(path, kind):
    return [s for s in ffprobe(path)["streams"] if s["codec_type"] == kind]


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_every_profile_cpu_form(cpu, clips, tmp_path, profile):
    out = tmp_path / "out.mkv"
    result = convert(cpu, profile, clips["plain"], out)
    assert (result.accel, result.fallback) == ("cpu", None)
    (v,) = streams(out, "video")
    size = output_size(BUILTIN_PROFILES[profile], cpu.probe(clips["plain"]))
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == (BUILTIN_PROFILES[profile].codec, *size,
                                                                        "yuv420p")


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_every_profile_vulkan_form_where_lavapipe_runs_its_filter(vulkan, clips, tmp_path, profile):
    out = tmp_path / "out.mp4"
    forms = capabilities.profile_forms(BUILTIN_PROFILES[profile], vulkan.caps)
    result = convert(vulkan, profile, clips["plain"], out)
    assert result.accel == forms[0] and result.fallback is None  # the probe kept crashing filters out
    (v,) = streams(out, "video")
    size = output_size(BUILTIN_PROFILES[profile], vulkan.probe(clips["plain"]))
    assert (v["codec_name"], v["width"], v["height"]) == (BUILTIN_PROFILES[profile].codec, *size)


@pytest.mark.parametrize("name, size, audio", [
    ("odd", (1280, 720), 1),  # 201x113: even sizes, aspect kept
    ("10bit", (1280, 720), 0),
    ("vfr", (1280, 720), 0),
    ("no-audio", (1280, 720), 0),
    ("two-audio", (1280, 720), 2),
])
@pytest.mark.parametrize("form", ["cpu", "vulkan"])
def test_odd_inputs_convert(request, clips, tmp_path, name, size, audio, form):
    converter = request.getfixturevalue(form)
    out = tmp_path / "out.mp4"
    result = convert(converter, "h264-720p", clips[name], out)
    assert result.accel == form
    (v,) = streams(out, "video")
    assert (v["width"], v["height"], v["pix_fmt"], v["codec_name"]) == (*size, "yuv420p", "h264")
    assert len(streams(out, "audio")) == audio


def test_text_subtitles_are_kept_as_mov_text_in_mp4_and_srt_in_mkv(cpu, clips, tmp_path):
    convert(cpu, "h264-720p", clips["subtitles"], tmp_path / "out.mp4")
    assert [s["codec_name"] for s in streams(tmp_path / "out.mp4", "subtitle")] == ["mov_text"]
    convert(cpu, "h264-720p", tmp_path / "out.mp4", tmp_path / "back.mkv")
    assert [s["codec_name"] for s in streams(tmp_path / "back.mkv", "subtitle")] == ["subrip"]


@pytest.mark.parametrize("name", ["odd", "two-audio", "subtitles", "no-audio"])
def test_ffmpeg_stream_summary_stands_in_for_ffprobe(clips, name):
    """Hosts with only imageio-ffmpeg's binary have no ffprobe: the worker reads ``ffmpeg -i`` instead."""
    from dataclasses import replace

    from worker import ffmpeg

    expected = ffmpeg.probe("ffprobe", clips[name])
    got = ffmpeg.probe_with_ffmpeg("ffmpeg", clips[name])
    assert got.duration == pytest.approx(expected.duration, abs=0.01)  # ffmpeg -i prints centiseconds
    assert replace(got, duration=0) == replace(expected, duration=0, pix_fmt=None)
