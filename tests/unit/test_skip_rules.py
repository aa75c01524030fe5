"""A profile's skip and keep-smaller rules (converter_common/skip_rules.py), and the skipped state in the store on
both backends: the guarded transition, its attempt row and its ``job.skipped`` webhook event, a kept source."""

import dataclasses

import pytest

from converter_common.profiles import BUILTIN_PROFILES
from converter_common.skip_rules import SourceFacts, facts_from_ffprobe, keep_source_reason, skip_reason
from master.states import JobStatus
from master.store import InvalidTransition

H264_720 = BUILTIN_PROFILES["h264-720p"]


def facts(**fields):
    base = dict(codec="h264", width=1280, height=720, fps=25.0, bitrate=2_000_000)
    return SourceFacts(**{**base, **fields})


def test_a_source_already_matching_is_skipped_with_the_reason():
    reason = skip_reason(H264_720, facts())
    assert reason is not None
    assert "h264 1280x720" in reason and "h264-720p" in reason and "0.087" in reason


@pytest.mark.parametrize("different", [
    {"codec": "hevc"},  # another codec
    {"height": 1080, "width": 1920},  # taller than the profile
    {"bitrate": 3_000_000},  # 0.130 bits per pixel > 0.1 x 1.2
    {"hdr": True},  # the profile tone-maps to SDR: converting changes the output
    {"bitrate": 0.0},  # the bitrate could not be told
    {"fps": 0.0},
])
def test_a_source_that_differs_is_converted(different):
    assert skip_reason(H264_720, facts(**different)) is None


def test_the_tolerance_and_the_profiles_without_the_rule():
    at_limit = facts(bitrate=0.12 * 1280 * 720 * 25)
    assert skip_reason(H264_720, at_limit) is not None
    assert skip_reason(dataclasses.replace(H264_720, skip_tolerance=1.0), at_limit) is None
    for name in ("denoise-1080p", "deinterlace", "av1-1080p", "hevc-1080p-hdr10"):
        assert BUILTIN_PROFILES[name].skip_bpp == 0
        assert skip_reason(BUILTIN_PROFILES[name], facts(codec=BUILTIN_PROFILES[name].codec)) is None
    assert skip_reason(BUILTIN_PROFILES["hevc-1080p"], facts(codec="hevc", bitrate=1_000_000)) is not None
    assert skip_reason(H264_720, None) is None


def test_keep_smaller():
    assert keep_source_reason(H264_720, 1000, 1000) is None
    assert "larger than the source" in keep_source_reason(H264_720, 1000, 1001)
    assert keep_source_reason(dataclasses.replace(H264_720, discard_larger=False), 1000, 5000) is None


def test_facts_from_ffprobe_take_the_stream_bitrate_else_the_files():
    streams = [{"codec_type": "audio", "codec_name": "aac"},
               {"codec_type": "video", "codec_name": "h264", "width": 640, "height": 360,
                "avg_frame_rate": "30000/1001", "bit_rate": "500000", "color_transfer": "bt709"}]
    got = facts_from_ffprobe({"streams": streams, "format": {"duration": "10.0"}}, 2_000_000)
    assert (got.codec, got.width, got.height, got.bitrate, got.hdr) == ("h264", 640, 360, 500000, False)
    assert got.fps == pytest.approx(29.97, abs=0.01)
    del streams[1]["bit_rate"]
    assert facts_from_ffprobe({"streams": streams, "format": {"duration": "10.0"}}, 2_000_000).bitrate == 1_600_000
    streams[1]["tags"] = {"BPS": "700000"}
    assert facts_from_ffprobe({"streams": streams, "format": {}}, 0).bitrate == 700000
    assert facts_from_ffprobe({"streams": streams[:1]}, 10) is None



def add(store, job_id="j1"):
    return store.create_job(job_id=job_id, source_path="in/a.mp4", output_path=f"out/{job_id}.mp4",
                            profile="h264-720p", source_size=10, source_sha256="00" * 32, source_mtime_ns=1,
                            max_attempts=3)


def test_store_skip_is_one_guarded_transition_with_its_attempt_and_event(store):
    assert store.schema_version >= 7
    add(store)
    with pytest.raises(InvalidTransition):
        store.skip("j1", worker_id=None, reason="not claimed yet")
    store.claim_next("w1", 30)
    job = store.skip("j1", worker_id="w1", reason="already h264")
    assert (job.status, job.reason, job.kept_source, job.output_size) == (JobStatus.SKIPPED, "already h264", False,
                                                                         None)
    assert job.finished_at is not None and job.lease_expires_at is None
    assert [a["outcome"] for a in store.attempts_of("j1")] == ["skipped"]
    assert [e["type"] for e in store.webhook_events_to_fan_out()] == ["job.skipped"]
    assert store.counts_by_status()["skipped"] == 1
    assert store.list_jobs(status=JobStatus.SKIPPED)[1] == 1
    job = store.retry("j1")
    assert (job.status, job.reason) == (JobStatus.PENDING, None)


def test_store_complete_with_a_kept_source(store):
    add(store)
    store.claim_next("w1", 30)
    job = store.complete_job("j1", 10, "00" * 32, worker_id="w1", kept_source="output larger")
    assert (job.status, job.kept_source, job.reason, job.saved_bytes) == (JobStatus.COMPLETED, True,
                                                                          "output larger", 0)
    assert store.get_job("j1").to_dict()["kept_source"] is True
    add(store, "j2")
    store.claim_next("w1", 30)
    assert store.complete_job("j2", 5, "11" * 32, worker_id="w1").kept_source is False


def test_an_upscaled_output_larger_than_its_source_is_discarded_too():
    # discard_larger holds for every output, an upscale included (h264-720p upscales a 320x180 source): only a
    # profile with discard_larger false keeps a larger output, as one that upscales on purpose would
    assert H264_720.upscale and "larger than the source" in keep_source_reason(H264_720, 1000, 5000)
    assert keep_source_reason(dataclasses.replace(H264_720, upscale=False), 1000, 5000) is not None
    assert keep_source_reason(dataclasses.replace(H264_720, discard_larger=False), 1000, 5000) is None
