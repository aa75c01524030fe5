"""Profile → FFmpeg arguments (both forms), accel choice, fallback bookkeeping, probe parsing. No processes."""

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from worker import capabilities
from worker.capabilities import Capabilities, VulkanInfo
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.ffmpeg_command import Plan, build_command, output_size
from worker.media import MediaInfo
from worker.metrics import WorkerMetrics

HD = MediaInfo(duration=2.0, video_codec="h264", width=1920, height=1080, audio_codec="aac", audio_streams=1)
VK = Plan("vulkan", "libx264")
BT709 = "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709"


def joined(profile, plan=Plan("cpu", "libx264"), info=HD, output="o.mp4"):
    return " ".join(build_command("ffmpeg", BUILTIN_PROFILES[profile], Path("s.mkv"), Path(output), info=info,
                                  plan=plan))


def test_builtin_profiles_are_the_issue_list():
    assert set(BUILTIN_PROFILES) == {"h264-720p", "h264-1080p", "hevc-1080p", "av1-1080p", "denoise-1080p",
                                     "deinterlace", "hevc-1080p-hdr10", "health-check"}


@pytest.mark.parametrize("size, profile, expected", [
    ((1920, 1080), "h264-720p", (1280, 720)),
    ((321, 241), "h264-720p", (960, 720)),  # odd: rounded to even, aspect kept
    ((321, 241), "deinterlace", (320, 240)),  # a profile that never upscales
    ((3840, 2160), "hevc-1080p", (1920, 1080)),
    ((1080, 1920), "h264-720p", (406, 720)),  # portrait
])
def test_output_size_keeps_aspect_and_is_even(size, profile, expected):
    info = MediaInfo(2.0, "h264", size[0], size[1], None)
    assert output_size(BUILTIN_PROFILES[profile], info) == expected


def test_anamorphic_and_rotated_sources_use_the_displayed_shape():
    dvd = MediaInfo(2.0, "mpeg2video", 720, 576, None, sample_aspect=16 / 15)
    assert output_size(BUILTIN_PROFILES["h264-720p"], dvd) == (960, 720)
    phone = MediaInfo(2.0, "h264", 1920, 1080, None, rotation=90)
    assert output_size(BUILTIN_PROFILES["h264-720p"], phone) == (406, 720)


def test_cpu_and_vulkan_forms_of_each_filter():
    assert f"-vf nlmeans=s=1.0:p=7:r=15,scale=1920:1080,format=yuv420p,{BT709},setsar=1" in joined("denoise-1080p")
    vk = joined("denoise-1080p", VK)
    assert "-init_hw_device vulkan=vk:0 -filter_hw_device vk" in vk
    assert ("-vf format=yuv420p,hwupload,nlmeans_vulkan=s=1.0:p=7:r=15,scale_vulkan=w=1920:h=1080:format=yuv420p,"
            f"hwdownload,format=yuv420p,format=yuv420p,{BT709},setsar=1") in vk
    assert "bwdif=mode=send_frame:parity=auto:deint=all,scale=" in joined("deinterlace")
    assert "hwupload,bwdif_vulkan=mode=send_frame:parity=auto:deint=all,scale_vulkan=" in joined("deinterlace", VK)
    assert "-hwaccel" not in vk


def test_vulkan_decode_and_vulkan_encoder_keep_frames_on_the_gpu():
    vk = joined("h264-1080p", Plan("vulkan", "h264_vulkan", vulkan_decode=True))
    assert "-hwaccel vulkan -hwaccel_device vk -hwaccel_output_format vulkan" in vk
    assert f"-vf scale_vulkan=w=1920:h=1080:format=nv12,{BT709},setsar=1 -c:v h264_vulkan -rc_mode cqp -qp 21" in vk
    assert "hwupload" not in vk and "hwdownload" not in vk


def test_encoders_get_their_own_options():
    assert "-c:v libx265 -preset fast -crf 26 -x265-params log-level=error -pix_fmt yuv420p -tag:v hvc1" in \
        joined("hevc-1080p", Plan("cpu", "libx265"))
    assert "-tag:v" not in joined("hevc-1080p", Plan("cpu", "libx265"), output="o.mkv")
    assert "-c:v libsvtav1 -preset 8 -crf 35" in joined("av1-1080p", Plan("cpu", "libsvtav1"))
    assert "-c:v libaom-av1 -cpu-used 8 -row-mt 1 -crf 35 -b:v 0" in joined("av1-1080p", Plan("cpu", "libaom-av1"))


def test_every_audio_stream_and_the_subtitle_policy():
    info = MediaInfo(2.0, "h264", 640, 360, "aac", audio_streams=2,
                     subtitle_codecs=("mov_text", "hdmv_pgs_subtitle", "subrip"))
    mp4 = joined("h264-720p", info=info)
    assert "-map 0:a? -vf" in mp4 and "-c:a aac -b:a 128k" in mp4
    assert "-map 0:s:0 -c:s:0 mov_text -map 0:s:2 -c:s:1 mov_text" in mp4 and "0:s:1" not in mp4  # no bitmaps in MP4
    mkv = joined("h264-720p", info=info, output="o.mkv")
    assert "-map 0:s:0 -c:s:0 srt -map 0:s:1 -c:s:1 copy -map 0:s:2 -c:s:2 copy" in mkv
    assert "-map 0:s" not in joined("h264-720p", info=MediaInfo(2.0, "h264", 640, 360, None))


def caps(device_type="discrete", filters=("scale_vulkan", "nlmeans_vulkan", "bwdif_vulkan"), encoders=(),
         decode=()):
    vk = VulkanInfo(device="GPU", type=device_type, filters=list(filters), encoders=list(encoders),
                    decode=list(decode))
    return Capabilities(ffmpeg="ffmpeg", version="x", encoders=frozenset({"libx264", "libx265", "libaom-av1"}),
                        vulkan=vk)


def converter(c, **settings):
    return Converter(FfmpegSection(**settings), c, WorkerMetrics(CollectorRegistry()))


def test_auto_uses_a_gpu_only_where_it_pays():
    auto = converter(caps())
    assert auto.plan(BUILTIN_PROFILES["denoise-1080p"], HD).accel == "vulkan"
    assert auto.plan(BUILTIN_PROFILES["deinterlace"], HD).accel == "vulkan"
    assert auto.plan(BUILTIN_PROFILES["h264-720p"], HD).accel == "cpu"  # plain scaling: the encoder dominates
    with_encoder = converter(caps(encoders=["h264_vulkan"]))
    assert with_encoder.plan(BUILTIN_PROFILES["h264-720p"], HD) == Plan("vulkan", "h264_vulkan", False, "0")
    assert converter(caps(device_type="cpu")).plan(BUILTIN_PROFILES["denoise-1080p"], HD).accel == "cpu"


def test_forced_vulkan_cpu_mode_missing_filters_and_alternative_encoders():
    lavapipe = caps(device_type="cpu", filters=("scale_vulkan", "bwdif_vulkan"))  # nlmeans_vulkan crashed
    forced = converter(lavapipe, accel="vulkan")
    assert forced.plan(BUILTIN_PROFILES["h264-720p"], HD).accel == "vulkan"
    assert forced.plan(BUILTIN_PROFILES["deinterlace"], HD).accel == "vulkan"
    assert forced.plan(BUILTIN_PROFILES["denoise-1080p"], HD).accel == "cpu"
    assert forced.capabilities()["profiles"]["denoise-1080p"] == ["cpu"]
    assert converter(caps(), accel="cpu").plan(BUILTIN_PROFILES["denoise-1080p"], HD).accel == "cpu"
    assert converter(caps()).plan(BUILTIN_PROFILES["av1-1080p"], HD).encoder == "libaom-av1"  # no libsvtav1
    decode = converter(caps(decode=["h264"]), vulkan_decode=True)
    assert decode.plan(BUILTIN_PROFILES["denoise-1080p"], HD).vulkan_decode


def test_consecutive_vulkan_failures_disable_vulkan_and_announce_it():
    c = converter(caps(), vulkan_max_failures=2)
    c.metrics.vulkan_available.set(1)
    c._vulkan_outcome("boom")
    c._vulkan_outcome(None)  # a success resets the count
    c._vulkan_outcome("boom")
    assert c.vulkan_usable and not c.take_announcement()
    c._vulkan_outcome("boom again")
    assert not c.vulkan_usable and "2 consecutive Vulkan failures, last: boom again" in c.vulkan_disabled
    assert c.take_announcement() and not c.take_announcement()
    assert c.metrics.registry.get_sample_value("converter_worker_vulkan_available") == 0
    data = c.capabilities()
    assert data["accel"] == ["cpu"] and data["vulkan"]["disabled"] == c.vulkan_disabled
    assert c.plan(BUILTIN_PROFILES["denoise-1080p"], HD).accel == "cpu"


H200_LOG = """[Vulkan @ 0x5] GPU listing:
[Vulkan @ 0x5]     0: NVIDIA H200 (discrete) (0x2335)
[Vulkan @ 0x5] Device 0 selected: NVIDIA H200 (discrete) (0x2335)
[Vulkan @ 0x5] Queue families:
[Vulkan @ 0x5]     0: graphics compute transfer sparse (queues: 16)
[Vulkan @ 0x5]     1: transfer sparse (queues: 2)
[Vulkan @ 0x5]     3: video decode (queues: 7)
"""


def test_device_line_and_queue_families_are_parsed():
    selected = capabilities._SELECTED.search(H200_LOG)
    assert (selected["name"], capabilities.DEVICE_TYPES[selected["type"]]) == ("NVIDIA H200", "discrete")
    queues = [m["flags"] for m in capabilities._QUEUE.finditer(H200_LOG)]
    assert queues == ["graphics compute transfer sparse", "transfer sparse", "video decode"]
    lavapipe = "[AVHWDeviceContext @ 0x5] Device 0 selected: llvmpipe (LLVM 15.0.6, 256 bits) (software) (0x0)\n"
    selected = capabilities._SELECTED.search(lavapipe)
    assert (selected["name"], selected["type"]) == ("llvmpipe (LLVM 15.0.6, 256 bits)", "software")
