"""What a health check's result may carry (the master's check of it) and how the worker's decode reads FFmpeg."""

from pathlib import Path

import pytest

from master.errors import ApiError
from master.handlers.health_result import health_fields
from worker import health
from worker.ffmpeg import FfmpegHostFailure


def test_a_result_is_checked_and_bounded():
    lines = [f"[h264 @ 0x1] error {n} " + "x" * 400 for n in range(80)]
    kept = health_fields({"healthy": False, "errors": lines, "error_count": 80, "decoder": "vulkan"})
    assert len(kept["errors"]) == 50 and all(len(line) == 300 for line in kept["errors"])
    assert (kept["error_count"], kept["decoder"], kept["fallback"]) == (80, "vulkan", None)
    assert health_fields({"healthy": True}) == {"healthy": True, "errors": [], "error_count": 0, "decoder": "cpu",
                                                "fallback": None}


@pytest.mark.parametrize("bad", [
    None, [], {}, {"healthy": "yes"}, {"healthy": True, "errors": ["one"]}, {"healthy": False},
    {"healthy": False, "errors": ["a", "b"], "error_count": 1}, {"healthy": True, "decoder": "gpu"},
    {"healthy": False, "errors": [1]}, {"healthy": True, "extra": 1}, {"healthy": True, "error_count": True},
])
def test_a_malformed_result_is_refused(bad):
    with pytest.raises(ApiError) as refused:
        health_fields(bad)
    assert (refused.value.status, refused.value.code) == (400, "invalid_field")


def test_the_decode_command_reads_every_video_and_audio_stream_to_null():
    cpu = health.command("ffmpeg", Path("s.mkv"))
    assert cpu[cpu.index("-i") + 1:] == ["s.mkv", "-map", "0:v?", "-map", "0:a?", "-f", "null", "-progress",
                                         "pipe:1", "-"]
    assert "-xerror" not in cpu and cpu[cpu.index("-loglevel") + 1] == "error"
    vulkan = health.command("ffmpeg", Path("s.mkv"), "1")
    assert vulkan[vulkan.index("-init_hw_device") + 1] == "vulkan=vk:1" and "-hwaccel" in vulkan


def test_what_a_decode_run_means():
    assert health.Decode(0).clean and health.Decode(0).host_failure() is None
    errors = health.Decode(0, ["[h264 @ 0x1] concealing 12 DC errors"], 3)
    assert not errors.clean and errors.host_failure() is None  # the file's fault: a result
    assert isinstance(health.Decode(-9).host_failure(), FfmpegHostFailure)
    assert isinstance(health.Decode(1, ["Error writing: No space left on device"], 1).host_failure(),
                      FfmpegHostFailure)
    unopenable = health.Decode(1, ["x.mkv: Invalid data found when processing input"], 1)
    assert unopenable.host_failure() is None
    result = health._result(unopenable, "cpu", 0.0, "ffprobe cannot read x.mkv: Invalid data")
    assert (result.healthy, result.errors, result.error_count) == (False, tuple(unopenable.lines), 1)
    silent = health._result(health.Decode(0), "cpu", 1.0, "ffprobe cannot read x.mkv: moov atom not found")
    assert not silent.healthy and silent.errors == ("ffprobe cannot read x.mkv: moov atom not found",)
