"""HDR: what the probe makes of ffprobe's colour output, and the tone-map / keep policies in both command forms."""

from pathlib import Path

from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES, HDR_POLICIES
from worker.capabilities import Capabilities, VulkanInfo
from worker.config import FfmpegSection
from worker.conversion import Converter, hdr_handling
from worker.ffmpeg import colour_from_ffprobe
from worker.ffmpeg_command import DROP_HDR_METADATA, Plan, build_command
from worker.media import Colour, MasteringDisplay, MediaInfo
from worker.metrics import WorkerMetrics

P3_1000 = MasteringDisplay(red=(34000, 16000), green=(13250, 34500), blue=(7500, 3000), white=(15635, 16450),
                           max_luminance=10000000, min_luminance=1)
HDR10 = MediaInfo(1.0, "hevc", 3840, 2160, None, pix_fmt="yuv420p10le",
                  colour=Colour("bt2020", "smpte2084", "bt2020nc", P3_1000, (1000, 400)))
HLG = MediaInfo(1.0, "hevc", 3840, 2160, None, colour=Colour("bt2020", "arib-std-b67", "bt2020nc"))
SDR = MediaInfo(1.0, "h264", 1920, 1080, None, colour=Colour("bt709", "bt709", "bt709"))
DVD = MediaInfo(1.0, "mpeg2video", 720, 576, None, colour=Colour("bt470bg", "bt709", "bt470bg"))
VK = Plan("vulkan", "libx264")
PLACEBO = ("libplacebo=w=1280:h=720:tonemapping=hable:peak_detect=0:colorspace=bt709:color_primaries=bt709:"
           "color_trc=bt709:range=tv:format=yuv420p")
CPU_TONEMAP = ("zscale=w=1280:h=720:t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
               "zscale=t=bt709:m=bt709:r=tv,format=yuv420p")
BT709_TAGS = "-color_primaries bt709 -color_trc bt709 -colorspace bt709"
BT709 = "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709"


def joined(profile, info, plan=Plan("cpu", "libx264"), output="o.mkv"):
    return " ".join(build_command("ffmpeg", BUILTIN_PROFILES[profile], Path("s.mkv"), Path(output), info=info,
                                  plan=plan))


def test_every_profile_has_a_known_hdr_policy_and_only_the_hdr10_profile_keeps_hdr():
    assert {p.hdr for p in BUILTIN_PROFILES.values()} <= set(HDR_POLICIES)
    assert [name for name, p in BUILTIN_PROFILES.items() if p.hdr == "keep"] == ["hevc-1080p-hdr10"]
    assert BUILTIN_PROFILES["hevc-1080p-hdr10"].bit_depth == 10


def test_ffprobe_stream_and_first_frame_side_data_make_the_colour():
    stream = {"color_primaries": "bt2020", "color_transfer": "smpte2084", "color_space": "bt2020nc",
              "side_data_list": [{"side_data_type": "DOVI configuration record", "dv_profile": 8, "dv_level": 6}]}
    frame = [{"side_data_type": "Mastering display metadata", "red_x": "34000/50000", "red_y": "16000/50000",
              "green_x": "13250/50000", "green_y": "34500/50000", "blue_x": "7500/50000", "blue_y": "3000/50000",
              "white_point_x": "15635/50000", "white_point_y": "16450/50000", "min_luminance": "1/10000",
              "max_luminance": "10000000/10000"},
             {"side_data_type": "Content light level metadata", "max_content": 1000, "max_average": 400}]
    colour = colour_from_ffprobe(stream, frame)
    assert colour == Colour("bt2020", "smpte2084", "bt2020nc", P3_1000, (1000, 400), "profile 8, level 6")
    assert colour.hdr == "PQ" and colour.describe() == ("HDR PQ (bt2020, mastering 0.0001-1000 cd/m², MaxCLL 1000, "
                                                        "MaxFALL 400, Dolby Vision profile 8, level 6)")
    assert colour_from_ffprobe({"color_transfer": "arib-std-b67"}, []).hdr == "HLG"
    assert colour_from_ffprobe({"color_transfer": "unknown"}, []) == Colour()


def test_an_hdr_source_is_tone_mapped_on_the_cpu_with_zscale_and_hable():
    cpu = joined("h264-720p", HDR10)
    assert f"-vf {CPU_TONEMAP},{DROP_HDR_METADATA},{BT709},setsar=1 " in cpu
    assert f"-pix_fmt yuv420p {BT709_TAGS}" in cpu
    assert "zscale=w=1280:h=720:t=linear" in joined("h264-720p", HLG)  # HLG too


def test_the_vulkan_form_tone_maps_in_one_libplacebo_pass():
    vk = joined("h264-720p", HDR10, VK)
    assert f"-vf format=yuv420p10le,hwupload,{PLACEBO},hwdownload,format=yuv420p,format=yuv420p," \
           f"{DROP_HDR_METADATA},{BT709},setsar=1 " in vk
    decoded = joined("denoise-1080p", HDR10, Plan("vulkan", "libx264", vulkan_decode=True))
    assert "-vf nlmeans_vulkan=s=1.0:p=7:r=15,libplacebo=w=1920:h=1080:tonemapping=hable" in decoded
    assert "scale_vulkan" not in vk + decoded and BT709_TAGS in vk


def test_an_sdr_source_is_never_tone_mapped_and_always_leaves_tagged_bt709():
    for info in (SDR, MediaInfo(1.0, "h264", 1920, 1080, None)):  # tagged, untagged
        for plan in (Plan("cpu", "libx264"), VK):
            command = joined("h264-720p", info, plan)
            assert "tonemap" not in command and "zscale" not in command and "sidedata" not in command
            assert BT709_TAGS in command
    assert f"scale=1280:720,format=yuv420p,{BT709},setsar=1" in joined("h264-720p", SDR)
    assert "scale=900:720:in_color_matrix=bt470:out_color_matrix=bt709," in joined("h264-720p", DVD)  # BT.601


def test_hdr10_is_kept_with_its_tags_and_metadata_in_10_bit_hevc():
    x265 = Plan("cpu", "libx265")
    keep = joined("hevc-1080p-hdr10", HDR10, x265, output="o.mp4")
    assert ("-vf scale=1920:1080,format=yuv420p10le,"
            "setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc,setsar=1 ") in keep
    assert ("-c:v libx265 -preset fast -crf 24 -x265-params log-level=error:hdr10=1:master-display="
            "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400 "
            "-pix_fmt yuv420p10le -tag:v hvc1 -color_primaries bt2020 -color_trc smpte2084 -colorspace bt2020nc") \
        in keep
    vk = joined("hevc-1080p-hdr10", HDR10, Plan("vulkan", "libx265"))
    assert "format=yuv420p10le,hwupload,libplacebo=w=1920:h=1080:format=yuv420p10le,hwdownload" in vk
    assert "tonemapping" not in vk and "sidedata" not in vk
    hlg = joined("hevc-1080p-hdr10", HLG, x265)
    assert "-x265-params log-level=error -pix_fmt yuv420p10le" in hlg and "-color_trc arib-std-b67" in hlg
    sdr = joined("hevc-1080p-hdr10", SDR, x265)
    assert "-x265-params log-level=error -pix_fmt yuv420p10le" in sdr and BT709_TAGS in sdr


def caps(filters=("scale_vulkan", "nlmeans_vulkan", "bwdif_vulkan", "libplacebo"), device_type="discrete"):
    vk = VulkanInfo(device="GPU", type=device_type, filters=list(filters))
    return Capabilities(ffmpeg="ffmpeg", version="x", encoders=frozenset({"libx264", "libx265"}), vulkan=vk)


def converter(c, **settings):
    return Converter(FfmpegSection(**settings), c, WorkerMetrics(CollectorRegistry()))


def test_tone_mapping_is_where_the_gpu_pays_if_libplacebo_ran_in_the_probe():
    auto = converter(caps())
    assert auto.plan(BUILTIN_PROFILES["h264-720p"], HDR10).accel == "vulkan"
    assert auto.plan(BUILTIN_PROFILES["h264-720p"], SDR).accel == "cpu"  # plain scaling stays on the CPU
    assert auto.plan(BUILTIN_PROFILES["hevc-1080p-hdr10"], HDR10).accel == "cpu"  # keep: plain scaling too
    no_placebo = caps(filters=("scale_vulkan",))
    assert converter(no_placebo).plan(BUILTIN_PROFILES["h264-720p"], HDR10).accel == "cpu"
    assert converter(no_placebo, accel="vulkan").plan(BUILTIN_PROFILES["h264-720p"], HDR10).accel == "cpu"
    forced = converter(caps(), accel="vulkan")
    assert forced.plan(BUILTIN_PROFILES["hevc-1080p-hdr10"], HDR10).accel == "cpu"  # 10-bit out: CPU only
    assert forced.capabilities()["profiles"]["hevc-1080p-hdr10"] == ["cpu"]
    lavapipe = caps(device_type="cpu")
    assert converter(lavapipe).plan(BUILTIN_PROFILES["h264-720p"], HDR10).accel == "cpu"
    assert converter(lavapipe, accel="vulkan").plan(BUILTIN_PROFILES["h264-720p"], HDR10).accel == "vulkan"


def test_the_job_log_says_what_was_done_with_an_hdr_source():
    assert hdr_handling(BUILTIN_PROFILES["h264-720p"], HDR10).endswith("tone-mapped to SDR BT.709 (hable)")
    assert hdr_handling(BUILTIN_PROFILES["hevc-1080p-hdr10"], HLG) == "HDR HLG (bt2020) kept"
    assert hdr_handling(BUILTIN_PROFILES["h264-720p"], SDR) is None
