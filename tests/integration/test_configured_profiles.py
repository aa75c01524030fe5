"""Configured profiles (issue 18): the master's ``profiles:`` mapping names a built-in base and overrides its
fields, track rules included. A real master process and worker process with the real FFmpeg: the claim carries the
profile's definition, so the worker has no configuration of its own for it. GET /api/profiles and converterctl
show them; a submission names one like a built-in.
"""

from __future__ import annotations

import json
import signal

import pytest
import requests
import yaml

from converter_common.profiles import BUILTIN_PROFILES, definition_of
from converter_common.protocol import PROFILE_DEFINITION
from master.config import parse_profiles
from tests.fixtures import Cluster, ThreadedMaster, ffmpeg_available, ffprobe, master_config, write_yaml
from tests.integration.test_cli import converterctl
from tests.integration.test_profiles_convert import tracks, tracks_clip

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("configured-profiles"),  # one farm for the module
              pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe")]

PROFILES = {
    # jpn then eng (fre and the untagged track dropped), jpn the default, stereo at most; English subtitles only
    "anime-jpn": {"base": "h264-720p", "audio_languages": ["jpn", "eng"], "audio_channels": 2,
                  "subtitle_languages": ["eng"], "upscale": False, "crf": 28, "priority": 7,
                  "discard_larger": False,  # the output is checked, whatever its size against the source's
                  "description": "Anime: Japanese then English audio, English subtitles"},
    # Matroska only, every audio track, French subtitles only
    "fre-subs-mkv": {"base": "h264-720p", "containers": ["mkv"], "subtitle_languages": ["fre"], "upscale": False,
                     "discard_larger": False},
}


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """One master process with the configured profiles, one worker process, and the eng/fre/jpn/und source."""
    tmp = tmp_path_factory.mktemp("configured")
    cluster = Cluster(tmp, profiles=PROFILES)
    cluster.add_worker("w1")
    cluster.put_source("in/tracks.mkv", tracks_clip(tmp))
    yield cluster
    cluster.stop()


def submit(cluster, job_id: str, profile: str, output: str) -> requests.Response:
    return requests.post(f"{cluster.url}/api/jobs", json={"id": job_id, "source_path": "in/tracks.mkv",
                                                          "output_path": output, "profile": profile}, timeout=30)


def test_a_3_language_source_keeps_jpn_then_eng_with_jpn_the_default(farm):
    assert submit(farm, "anime-1", "anime-jpn", "out/anime.mp4").status_code == 201
    job = farm.wait_status("anime-1", "completed", "failed", timeout=120)
    assert job["status"] == "completed", job
    assert job["priority"] == 7 and not job["kept_source"]  # the profile's default priority; the converted output
    output = farm.root / "out" / "anime.mp4"
    assert [(language, channels, default) for language, channels, default in tracks(output, "audio")] == [
        ("jpn", 2, 1), ("eng", 1, 0)]
    assert [(language, codec) for language, codec, _ in tracks(output, "subtitle")] == [("eng", "mov_text")]
    (video,) = [s for s in ffprobe(output)["streams"] if s["codec_type"] == "video"]
    assert (video["codec_name"], video["height"]) == ("h264", 90)  # upscale: false kept the source's 90 lines


def test_subtitle_languages_filter_and_every_audio_track_stays(farm):
    assert submit(farm, "fre-1", "fre-subs-mkv", "out/fre.mkv").status_code == 201
    job = farm.wait_status("fre-1", "completed", "failed", timeout=120)
    assert job["status"] == "completed", job
    output = farm.root / "out" / "fre.mkv"
    assert [language for language, _, _ in tracks(output, "audio")] == ["eng", "fre", "jpn", "und"]
    assert [(language, codec) for language, codec, _ in tracks(output, "subtitle")] == [("fre", "subrip")]


def test_the_configured_containers_are_the_outputs_allowed(farm):
    refused = submit(farm, "fre-2", "fre-subs-mkv", "out/fre.mp4")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_path")
    assert "must end in .mkv for fre-subs-mkv" in refused.json()["message"]


def test_an_unknown_profile_is_still_the_400_json_error(farm):
    refused = submit(farm, "nope-1", "anime-eng", "out/nope.mp4")
    assert (refused.status_code, refused.json()["error"]) == (400, "unknown_profile")
    assert "anime-jpn" in refused.json()["message"]  # the configured ones are among those listed


def test_get_api_profiles_lists_built_in_then_configured_with_their_fields(farm):
    profiles = requests.get(f"{farm.url}/api/profiles", timeout=10).json()["profiles"]
    assert [p["name"] for p in profiles] == [*BUILTIN_PROFILES, "anime-jpn", "fre-subs-mkv"]
    anime = profiles[-2]
    assert {k: anime[k] for k in ("base", "audio_languages", "audio_channels", "subtitle_languages", "containers",
                                  "crf", "height", "upscale", "priority", "video_codec", "description",
                                  "discard_larger")} == {
        "base": "h264-720p", "audio_languages": ["jpn", "eng"], "audio_channels": 2, "subtitle_languages": ["eng"],
        "containers": ["mp4", "mkv", "mov"], "crf": 28, "height": 720, "upscale": False, "priority": 7,
        "video_codec": "libx264", "description": "Anime: Japanese then English audio, English subtitles",
        "discard_larger": False}
    assert profiles[0]["name"] == "h264-720p" and profiles[0]["base"] == ""


def test_converterctl_lists_the_configured_profiles_and_submits_with_one(farm):
    listing = converterctl(farm.url, "profiles")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:8] == ["NAME", "BASE", "CONTAINERS", "VIDEO", "HEIGHT", "AUDIO", "SUBTITLES", "PRIORITY"]
    anime = next(row.split() for row in rows if row.startswith("anime-jpn "))
    assert anime[:8] == ["anime-jpn", "h264-720p", "mp4,mkv,mov", "libx264", "720", "jpn>eng/2ch", "eng", "7"]
    built_in = next(row.split() for row in rows if row.startswith("h264-720p "))
    assert built_in[1] == "-" and built_in[5:7] == ["all", "all"]
    one = converterctl(farm.url, "profiles", "anime-jpn")
    fields = dict(line.split(":", 1) for line in one.stdout.splitlines())
    assert one.returncode == 0 and {k: fields[k].strip() for k in ("base", "audio_languages", "subtitle_languages")} \
        == {"base": "h264-720p", "audio_languages": "jpn, eng", "subtitle_languages": "eng"}
    assert json.loads(converterctl(farm.url, "profiles", "fre-subs-mkv", "--json").stdout)["containers"] == ["mkv"]
    assert converterctl(farm.url, "profiles", "nope").returncode != 0
    submitted = converterctl(farm.url, "submit", "in/tracks.mkv", "-o", "out/cli.mkv", "-p", "fre-subs-mkv",
                             "--id", "cli-1", "--json")
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["profile"] == "fre-subs-mkv"
    assert farm.wait_status("cli-1", "completed", "failed", timeout=120)["status"] == "completed"


def test_the_claim_carries_a_configured_profiles_definition_and_names_a_built_in(tmp_path):
    config = master_config(tmp_path)
    config = type(config)(**{**config.__dict__, "profiles": parse_profiles(PROFILES, "profiles")})
    master = ThreadedMaster(config)
    try:
        (master.root / "in").mkdir()
        (master.root / "in" / "a.mkv").write_bytes(b"x" * 100)
        assert master.submit("in/a.mkv", "out/a.mp4", job_id="configured", profile="anime-jpn").status_code == 201
        claim = master.claim("w")
        assert claim["id"] == "configured"
        assert claim[PROFILE_DEFINITION] == definition_of(config.profiles["anime-jpn"])
        assert claim[PROFILE_DEFINITION]["audio_languages"] == ["jpn", "eng"]
        assert master.submit("in/a.mkv", "out/b.mp4", job_id="built-in").status_code == 201
        claim = master.claim("w")
        assert claim["id"] == "built-in" and PROFILE_DEFINITION not in claim
    finally:
        master.stop()


def test_a_job_whose_profile_left_the_config_fails_once_and_the_worker_goes_on(tmp_path):
    """Submitted with a configured profile, claimed after a restart without it: the claim carries no definition, the
    worker falls back to a built-in by that name, finds none and fails the job (fatal: one attempt, no retry);
    the worker itself keeps running and converts the next job."""
    cluster = Cluster(tmp_path, profiles={"gone-soon": {"base": "h264-720p", "height": 90}})
    try:
        cluster.put_source("in/tracks.mkv", tracks_clip(tmp_path))
        cluster.submit("in/tracks.mkv", "out/gone.mp4", "gone-1", profile="gone-soon")
        config = yaml.safe_load(cluster.master_config.read_text())
        del config["profiles"]
        write_yaml(cluster.master_config, config)
        cluster.restart_master(signal.SIGTERM)
        cluster.add_worker("w1")
        job = cluster.wait_status("gone-1", "failed", "completed", timeout=60)
        assert job["status"] == "failed" and "unknown profile 'gone-soon'" in job["error"] and job["attempts"] == 1
        cluster.submit("in/tracks.mkv", "out/next.mkv", "next-1")
        assert cluster.wait_status("next-1", "completed", "failed", timeout=120)["status"] == "completed"
    finally:
        cluster.stop()
