"""Every built-in profile, and the odd inputs, through the worker's Converter with the real FFmpeg.

CPU form always; Vulkan form on lavapipe (software Vulkan, ``mesa-vulkan-drivers``) where its
filters run there: the probe decides, and a profile whose Vulkan filter does not run (nlmeans_vulkan
crashes on lavapipe) must come out of the CPU form. Clips are tiny so the module stays fast.
"""

import json
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from tests.fixtures import (HDR10_LIGHT_LEVEL, HDR10_MASTERING, LAVAPIPE_TRIES, ffprobe, lavapipe_crashed,
                            make_hdr10_clip)
from worker import capabilities
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.metrics import WorkerMetrics
from worker.ffmpeg_command import output_size, pix_fmt

pytestmark = pytest.mark.integration

TINY = "192x108"
CONVERTING = sorted(name for name, profile in BUILTIN_PROFILES.items() if not profile.check_only)  # health-check: none


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
        "hdr10": make_hdr10_clip(d / "hdr10.mkv", seconds=0.5),
        "tracks": tracks_clip(d),
    }


def tracks_clip(d: Path) -> Path:
    """0.5 s at 160x90: audio eng, fre, jpn (5.1) and an untagged one (all else mono); subtitles fre, eng."""
    subtitles = []
    for language, text in (("fre", "bonjour"), ("eng", "hello")):
        (d / f"{language}.srt").write_text(f"1\n00:00:00,000 --> 00:00:00,400\n{text}\n\n")
        subtitles += ["-i", str(d / f"{language}.srt")]
    tags = [arg for stream, language in (("a:0", "eng"), ("a:1", "fre"), ("a:2", "jpn"), ("s:0", "fre"), ("s:1", "eng"))
            for arg in (f"-metadata:s:{stream}", f"language={language}")]
    return clip(d / "tracks.mkv", *video("160x90"), *tone(440), *tone(550), *tone(660), *tone(770), *subtitles,
                *[arg for i in range(7) for arg in ("-map", str(i))], "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac:a:2", "6", "-c:s", "srt", *tags, seconds=0.5)


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


def convert_past_a_lavapipe_crash(converter, profile, source, directory):
    """(result, output path) of the first run whose Vulkan form did not segfault, or of the last try."""
    for attempt in range(LAVAPIPE_TRIES):
        output = directory / f"out-{attempt}.mp4"
        result = convert(converter, profile, source, output)
        if not lavapipe_crashed(result.fallback):
            break
    return result, output


def streams(path, kind):
    return [s for s in ffprobe(path)["streams"] if s["codec_type"] == kind]


@pytest.mark.parametrize("profile", CONVERTING)
def test_every_profile_cpu_form(cpu, clips, tmp_path, profile):
    out = tmp_path / "out.mkv"
    result = convert(cpu, profile, clips["plain"], out)
    assert (result.accel, result.fallback) == ("cpu", None)
    (v,) = streams(out, "video")
    size = output_size(BUILTIN_PROFILES[profile], cpu.probe(clips["plain"]))
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == (BUILTIN_PROFILES[profile].codec, *size,
                                                                        pix_fmt(BUILTIN_PROFILES[profile]))
    assert (v["color_primaries"], v["color_transfer"], v["color_space"]) == ("bt709", "bt709", "bt709")


@pytest.mark.parametrize("profile", CONVERTING)
def test_every_profile_vulkan_form_where_lavapipe_runs_its_filter(vulkan, clips, tmp_path, profile):
    forms = capabilities.profile_forms(BUILTIN_PROFILES[profile], vulkan.caps)
    result, out = convert_past_a_lavapipe_crash(vulkan, profile, clips["plain"], tmp_path)
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
    result, out = convert_past_a_lavapipe_crash(converter, "h264-720p", clips[name], tmp_path)
    assert result.accel == form
    (v,) = streams(out, "video")
    assert (v["width"], v["height"], v["pix_fmt"], v["codec_name"]) == (*size, "yuv420p", "h264")
    assert len(streams(out, "audio")) == audio


def test_text_subtitles_are_kept_as_mov_text_in_mp4_and_srt_in_mkv(cpu, clips, tmp_path):
    convert(cpu, "h264-720p", clips["subtitles"], tmp_path / "out.mp4")
    assert [s["codec_name"] for s in streams(tmp_path / "out.mp4", "subtitle")] == ["mov_text"]
    convert(cpu, "h264-720p", tmp_path / "out.mp4", tmp_path / "back.mkv")
    assert [s["codec_name"] for s in streams(tmp_path / "back.mkv", "subtitle")] == ["subrip"]


def tracks(path: Path, kind: str) -> list[tuple]:
    """(language, channels or codec, default) of each ``kind`` stream: ``und`` for an untagged one."""
    return [(s.get("tags", {}).get("language", "und"), s.get("channels", s["codec_name"]),
             s["disposition"]["default"]) for s in streams(path, kind)]


def test_a_3_language_source_keeps_only_the_listed_languages_in_the_chosen_order(cpu, clips, tmp_path):
    """jpn then eng (fre and the untagged track dropped), jpn the default, downmixed to stereo; English subtitles."""
    rules = replace(BUILTIN_PROFILES["h264-720p"], name="jpn-eng", height=90, audio_languages=("jpn", "eng"),
                    audio_channels=2, subtitle_languages=("eng",))
    assert [language for language, _, _ in tracks(clips["tracks"], "audio")] == ["eng", "fre", "jpn", "und"]
    cpu.convert(rules, clips["tracks"], tmp_path / "out.mp4", threading.Event(), label="test")
    assert tracks(tmp_path / "out.mp4", "audio") == [("jpn", 2, 1), ("eng", 1, 0)]
    assert [(language, codec) for language, codec, _ in tracks(tmp_path / "out.mp4", "subtitle")] == [
        ("eng", "mov_text")]
    kept_channels = replace(rules, audio_channels=0, subtitle_languages=("eng", "fre"))
    cpu.convert(kept_channels, clips["tracks"], tmp_path / "out.mkv", threading.Event(), label="test")
    assert tracks(tmp_path / "out.mkv", "audio") == [("jpn", 6, 1), ("eng", 1, 0)]
    assert [(language, codec) for language, codec, _ in tracks(tmp_path / "out.mkv", "subtitle")] == [
        ("eng", "subrip"), ("fre", "subrip")]


def test_the_default_profile_keeps_every_track(cpu, clips, tmp_path):
    convert(cpu, "h264-720p", clips["tracks"], tmp_path / "out.mkv")
    assert [(language, channels) for language, channels, _ in tracks(tmp_path / "out.mkv", "audio")] == [
        ("eng", 1), ("fre", 1), ("jpn", 6), ("und", 1)]
    assert [language for language, _, _ in tracks(tmp_path / "out.mkv", "subtitle")] == ["fre", "eng"]


@pytest.mark.parametrize("name", ["odd", "two-audio", "subtitles", "no-audio", "hdr10", "tracks"])
def test_ffmpeg_stream_summary_stands_in_for_ffprobe(clips, name):
    """Hosts with only imageio-ffmpeg's binary have no ffprobe: the worker reads ``ffmpeg -i`` instead."""
    from dataclasses import replace

    from worker import ffmpeg

    expected = ffmpeg.probe("ffprobe", clips[name])
    got = ffmpeg.probe_with_ffmpeg("ffmpeg", clips[name])
    assert got.duration == pytest.approx(expected.duration, abs=0.01)  # ffmpeg -i prints centiseconds
    assert replace(got, duration=0) == replace(expected, duration=0)


def mean_luma(path: Path, vf: str = "null") -> float:
    """Mean of signalstats' YAVG over the frames (8-bit limited range: 16 black, 235 white)."""
    result = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"{vf},signalstats,"
                             "metadata=print:key=lavfi.signalstats.YAVG:file=-", "-f", "null", "-"],
                            capture_output=True, text=True, check=True, timeout=60)
    values = [float(line.split("=")[1]) for line in result.stdout.splitlines() if "YAVG=" in line]
    return sum(values) / len(values)


def hdr10_side_data(path: Path) -> dict:
    """The first frame's mastering display and content light level side data, as ffprobe shows them."""
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
                             "-show_frames", "-print_format", "json", str(path)],
                            capture_output=True, text=True, check=True, timeout=60)
    frame = json.loads(result.stdout)["frames"][0]
    return {s["side_data_type"].lower().split()[0]: s for s in frame.get("side_data_list", [])
            if s["side_data_type"].lower().startswith(("mastering", "content light"))}


def hdr_converter(request, form):
    converter = request.getfixturevalue(form)
    if form == "vulkan" and "libplacebo" not in converter.caps.vulkan.filters:
        pytest.skip("libplacebo did not run on this Vulkan device (the CPU form is tested)")
    return converter


def test_the_probe_reports_hdr10(cpu, clips):
    colour = cpu.probe(clips["hdr10"]).colour
    assert (colour.hdr, colour.primaries, colour.matrix, colour.light_level) == ("PQ", "bt2020", "bt2020nc",
                                                                                 HDR10_LIGHT_LEVEL)
    m = colour.mastering
    assert f"G{m.green}B{m.blue}R{m.red}WP{m.white}L({m.max_luminance},{m.min_luminance})".replace(" ", "") == \
        HDR10_MASTERING


@pytest.mark.parametrize("form", ["cpu", "vulkan"])
def test_hdr10_is_tone_mapped_to_bt709_sdr(request, clips, tmp_path, form):
    converter = hdr_converter(request, form)
    out = tmp_path / "out.mp4"
    result = convert(converter, "h264-720p", clips["hdr10"], out)
    assert (result.accel, result.fallback) == (form, None)
    assert "tone-mapped to SDR BT.709 (hable)" in result.hdr
    (v,) = streams(out, "video")
    assert (v["pix_fmt"], v["color_primaries"], v["color_transfer"], v["color_space"]) == ("yuv420p", "bt709",
                                                                                        "bt709", "bt709")
    assert hdr10_side_data(out) == {}  # an SDR file does not claim HDR10 metadata
    # White at the 1000 cd/m² peak becomes SDR white; without tone mapping it stays at PQ's code value (grey)
    washed_out = mean_luma(clips["hdr10"], "scale=1280:720,format=yuv420p")
    tone_mapped = mean_luma(out)
    assert 185 <= tone_mapped <= 230 and tone_mapped - washed_out >= 25, (tone_mapped, washed_out)


def test_a_failed_vulkan_tone_map_is_rerun_on_the_cpu_form(vulkan, clips, tmp_path):
    """A stub in front of the real FFmpeg fails the job's libplacebo run (not the probe's trial, which has no
    ``-progress``): the CPU form's output is what comes back, tone-mapped all the same."""
    if "libplacebo" not in vulkan.caps.vulkan.filters:
        pytest.skip("libplacebo did not run on this Vulkan device")
    stub = tmp_path / "ffmpeg-placebo-fails"
    stub.write_text(f"""#!/bin/sh
case " $* " in *libplacebo*" -progress "*) echo 'libplacebo: vulkan exploded' >&2; exit 1;; esac
exec {vulkan.caps.ffmpeg} "$@"
""")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out.mp4"
    result = convert(start("vulkan", binary=str(stub)), "h264-720p", clips["hdr10"], out)
    assert (result.accel, result.fallback) == ("cpu", "ffmpeg failed: libplacebo: vulkan exploded")
    (v,) = streams(out, "video")
    assert (v["color_transfer"], v["color_primaries"]) == ("bt709", "bt709") and mean_luma(out) >= 185


def test_hevc_hdr10_keeps_pq_bt2020_and_the_metadata(cpu, clips, tmp_path):
    """CPU form only: a 10-bit profile has no Vulkan form (plain scaling, where the GPU does not pay)."""
    out = tmp_path / "out.mp4"
    result = convert(cpu, "hevc-1080p-hdr10", clips["hdr10"], out)
    assert (result.accel, result.fallback) == ("cpu", None) and result.hdr.endswith(" kept")
    (v,) = streams(out, "video")
    assert (v["profile"], v["pix_fmt"], v["color_primaries"], v["color_transfer"], v["color_space"]) == \
        ("Main 10", "yuv420p10le", "bt2020", "smpte2084", "bt2020nc")
    assert hdr10_side_data(out) == hdr10_side_data(clips["hdr10"]) != {}
