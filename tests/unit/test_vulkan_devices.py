"""Several Vulkan devices and proven Vulkan decode: which slot runs on which device, disabling one device,
the decode classes and their order, ``worker.concurrency: auto``, the config keys. No processes."""

import pytest
from prometheus_client import CollectorRegistry

from converter_common.config_loader import ConfigError, build
from converter_common.profiles import BUILTIN_PROFILES
from worker import capabilities
from worker.capabilities import Capabilities, VulkanInfo, decode_blocker, decode_class
from worker.config import FfmpegSection, WorkerConfig
from worker.conversion import Converter
from worker.devices import Device, auto_slots, device_for_slot
from worker.ffmpeg import _PIX_FMT
from worker.media import MediaInfo
from worker.metrics import WorkerMetrics

FILTERS = ["libplacebo", "nlmeans_vulkan", "scale_vulkan"]
HD_HEVC = MediaInfo(2.0, "hevc", 1920, 1080, None, pix_fmt="yuv420p")
UHD_HEVC10 = MediaInfo(2.0, "hevc", 3840, 2160, None, pix_fmt="yuv420p10le")


def gpu(index="0", decode_probe=None, error=""):
    return VulkanInfo(index=index, device=f"GPU {index}", type="discrete", filters=list(FILTERS),
                      decode_probe=decode_probe or {}, error=error)


def devices(*infos):
    return [Device(position, info) for position, info in enumerate(infos)]


def converter(*infos, **settings):
    caps = Capabilities(ffmpeg="ffmpeg", version="x", encoders=frozenset({"libx264"}), vulkan=infos[0],
                        devices=list(infos))
    return Converter(FfmpegSection(**settings), caps, WorkerMetrics(CollectorRegistry()))


# -- slots and devices ------------------------------------------------------------------------------

def test_slots_are_pinned_to_the_devices_round_robin():
    two = devices(gpu("0"), gpu("1"))
    assert [device_for_slot(slot, two, "auto").position for slot in range(4)] == [0, 1, 0, 1]


def test_a_disabled_devices_slots_go_to_the_devices_left():
    three = devices(gpu("0"), gpu("1"), gpu("2"))
    three[1].disabled = "3 consecutive Vulkan failures"
    assert [device_for_slot(slot, three, "auto").position for slot in range(6)] == [0, 2, 2, 0, 0, 2]
    three[0].disabled = three[2].disabled = "gone"
    assert device_for_slot(0, three, "auto") is None  # the CPU form


def test_a_device_that_failed_its_probe_takes_no_slot():
    pair = devices(gpu("0"), VulkanInfo(index="5", error="no Vulkan device 5: No such device"))
    assert {device_for_slot(slot, pair, "auto").position for slot in range(4)} == {0}


def test_a_software_device_is_used_only_with_accel_vulkan():
    lavapipe = devices(VulkanInfo(device="llvmpipe", type="cpu", filters=["scale_vulkan"]))
    assert device_for_slot(0, lavapipe, "auto") is None
    assert device_for_slot(0, lavapipe, "vulkan").position == 0


def test_failures_on_one_device_disable_it_alone_and_its_slots_move():
    c = converter(gpu("0"), gpu("1"), vulkan_max_failures=2)
    assert c.plan(BUILTIN_PROFILES["denoise-1080p"], HD_HEVC, slot=1).vulkan_device == "1"
    for _ in range(2):
        c._vulkan_outcome("VK_ERROR_DEVICE_LOST", c.devices[1])
    assert c.devices[1].disabled.startswith("2 consecutive Vulkan failures, last: VK_ERROR_DEVICE_LOST")
    assert c.vulkan_usable and c.vulkan_disabled is None and c.take_announcement()
    assert c.plan(BUILTIN_PROFILES["denoise-1080p"], HD_HEVC, slot=1).vulkan_device == "0"
    sample = c.metrics.registry.get_sample_value
    assert sample("converter_worker_vulkan_device_available", {"device": "1"}) == 0
    assert sample("converter_worker_vulkan_device_conversions_total", {"device": "1", "outcome": "failed"}) == 2
    reported = c.capabilities()["devices"]
    assert [d["position"] for d in reported] == [0, 1] and reported[0]["disabled"] is None
    assert reported[1]["disabled"] == c.devices[1].disabled
    for _ in range(2):
        c._vulkan_outcome("VK_ERROR_DEVICE_LOST", c.devices[0])
    assert not c.vulkan_usable and c.vulkan_disabled == c.devices[0].disabled
    assert c.plan(BUILTIN_PROFILES["denoise-1080p"], HD_HEVC, slot=0).accel == "cpu"
    assert sample("converter_worker_vulkan_available") == 0


def test_concurrency_auto_follows_the_gpus_and_cores():
    assert auto_slots(cpus=16, gpus=1) == 8  # the H200 host: jobs per hour still grew from 4 to 8 slots
    assert auto_slots(cpus=16, gpus=0) == 1
    assert auto_slots(cpus=4, gpus=1) == 2
    assert auto_slots(cpus=1, gpus=1) == 1
    assert auto_slots(cpus=128, gpus=2) == 16
    assert converter(gpu("0"), gpu("1")).auto_concurrency(cpus=16) == 8
    lavapipe = VulkanInfo(device="llvmpipe", type="cpu", filters=["scale_vulkan"])
    assert converter(lavapipe, accel="vulkan").auto_concurrency(cpus=16) == 1  # no GPU


# -- proven Vulkan decode ----------------------------------------------------------------------------

def test_decode_classes_are_codec_depth_and_size():
    assert decode_class("hevc", "yuv420p10le", 3840, 2160) == "hevc/10bit/uhd"
    assert decode_class("h264", "yuv420p", 1080, 1920) == "h264/8bit/hd"  # portrait 1080p is hd
    assert decode_class("h264", "yuvj420p", 1920, 1088) == "h264/8bit/uhd"
    assert decode_class("hevc", "p010le", 1280, 720) == "hevc/10bit/hd"
    assert decode_class("h264", "yuv422p", 1920, 1080) == "h264/yuv422p/hd"  # never probed: CPU decode
    assert decode_class("av1", None, 640, 360) == "av1/unknown/hd"


def test_a_class_is_tried_only_once_the_smaller_and_8_bit_ones_passed_and_a_hang_stops_its_codec():
    assert decode_blocker({}, "hevc", 8, "hd") == ""
    assert decode_blocker({"hevc/8bit/hd": "ok"}, "hevc", 8, "uhd") == ""
    assert decode_blocker({"hevc/8bit/hd": "failed: x"}, "hevc", 10, "hd") == "hevc/8bit/hd did not pass"
    assert decode_blocker({"hevc/8bit/hd": "ok", "hevc/10bit/hd": "failed: x"}, "hevc", 10, "uhd") == \
        "hevc/10bit/hd did not pass"
    assert decode_blocker({"hevc/8bit/hd": "ok", "hevc/8bit/uhd": "hung: no answer in 10 s"}, "hevc", 10, "hd") \
        == "hevc/8bit/uhd hung"


def test_auto_decodes_on_the_gpu_only_the_classes_the_probe_proved_on_that_device():
    proven = gpu("0", {"hevc/8bit/hd": "ok", "hevc/8bit/uhd": "hung: no answer in 10 s"})
    other = gpu("1", {"hevc/8bit/hd": "failed: VK_ERROR_FEATURE_NOT_PRESENT"})
    c = converter(proven, other)
    denoise = BUILTIN_PROFILES["denoise-1080p"]
    assert c.plan(denoise, HD_HEVC, slot=0).vulkan_decode
    assert not c.plan(denoise, HD_HEVC, slot=1).vulkan_decode  # the same class failed on device 1
    assert not c.plan(denoise, UHD_HEVC10, slot=0).vulkan_decode
    assert converter(proven, vulkan_decode=True).plan(denoise, UHD_HEVC10).vulkan_decode
    assert not converter(proven, vulkan_decode=False).plan(denoise, HD_HEVC).vulkan_decode
    registry = converter(proven).metrics.registry
    assert registry.get_sample_value("converter_worker_vulkan_decode_proven", {"device": "0", "decode": "x"}) is None


# -- listing and config ------------------------------------------------------------------------------

LISTING = """[Vulkan @ 0x5] GPU listing:
[Vulkan @ 0x5]     0: NVIDIA H200 (discrete) (0x2335)
[Vulkan @ 0x5]     1: NVIDIA H200 (discrete) (0x2335)
[Vulkan @ 0x5]     2: llvmpipe (LLVM 15.0.6, 256 bits) (software) (0x0)
[Vulkan @ 0x5] Device 0 selected: NVIDIA H200 (discrete) (0x2335)
[Vulkan @ 0x5] Queue families:
[Vulkan @ 0x5]     0: graphics compute transfer sparse (queues: 16)
"""


def test_auto_takes_every_gpu_listed_and_a_software_device_only_when_it_is_alone():
    listed = capabilities.parse_listing(LISTING)
    assert listed == [("0", "NVIDIA H200", "discrete"), ("1", "NVIDIA H200", "discrete"),
                      ("2", "llvmpipe (LLVM 15.0.6, 256 bits)", "software")]
    assert capabilities.select_devices("auto", listed) == ["0", "1"]
    assert capabilities.select_devices("auto", listed[2:]) == ["2"]
    assert capabilities.select_devices((1, 1), listed) == ["1", "1"]


@pytest.mark.parametrize("section, message", [
    ({"worker": {"concurrency": "many"}}, "worker.concurrency: must be 1..64 or auto, got 'many'"),
    ({"ffmpeg": {"vulkan_devices": [0, -1]}}, "ffmpeg.vulkan_devices: must be auto or a list of device indices"),
    ({"ffmpeg": {"vulkan_devices": []}}, "ffmpeg.vulkan_devices: must be auto or a list of device indices"),
    ({"ffmpeg": {"vulkan_decode": "yes"}}, "ffmpeg.vulkan_decode: must be auto, true or false, got 'yes'"),
])
def test_bad_values_are_one_line_errors(section, message):
    with pytest.raises(ConfigError) as error:
        build(WorkerConfig, section)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_defaults_are_auto():
    config = build(WorkerConfig, {})
    assert (config.worker.concurrency, config.ffmpeg.vulkan_devices, config.ffmpeg.vulkan_decode) == \
        ("auto", "auto", "auto")
    assert build(WorkerConfig, {"ffmpeg": {"vulkan_devices": [0, 1]}}).ffmpeg.vulkan_devices == (0, 1)


@pytest.mark.parametrize("stream, pix_fmt", [
    (" (Main 10), yuv420p10le(tv, bt2020nc/bt2020/smpte2084, progressive), 3840x2160, 25 fps", "yuv420p10le"),
    (" (High) (avc1 / 0x31637661), yuv420p(progressive), 1920x1080 [SAR 1:1 DAR 16:9], 25 fps", "yuv420p"),
    (" (Main), yuv420p(tv, progressive), 1280x720, SAR 1:1 DAR 16:9, 25 fps", "yuv420p"),
])
def test_the_ffmpeg_i_probe_reads_the_pixel_format_the_decode_class_needs(stream, pix_fmt):
    assert _PIX_FMT.match(stream)[1] == pix_fmt
