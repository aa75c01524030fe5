"""Configured profiles: ``converter_common.profiles.configured_profile`` (master config and worker claim alike), the
master's ``profiles:`` key (one config error line per mistake, exit 2), and how a worker picks a job's profile."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from converter_common.config_loader import ConfigError
from converter_common.profiles import (BUILTIN_PROFILES, OVERRIDABLE, ProfileDefinitionError, configured_profile,
                                       definition_of)
from converter_common.protocol import PROFILE_DEFINITION
from master.config import load_config
from worker import ffmpeg
from worker.errors import FatalError

BIN = Path(sys.executable).parent
ANIME = {"base": "h264-720p", "audio_languages": ["jpn", "eng"], "audio_channels": 2, "subtitle_languages": ["eng"],
         "crf": 20, "preset": "slow", "priority": 5}


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "master.yaml"
    path.write_text(text)
    return path


def test_a_configured_profile_is_its_base_with_the_fields_it_sets():
    profile = configured_profile("anime", ANIME)
    base = BUILTIN_PROFILES["h264-720p"]
    assert (profile.name, profile.base, profile.audio_languages, profile.audio_channels, profile.subtitle_languages,
            profile.crf, profile.preset, profile.priority) == ("anime", "h264-720p", ("jpn", "eng"), 2, ("eng",), 20,
                                                               "slow", 5)
    assert dataclasses.replace(profile, name=base.name, base="", audio_languages=(), audio_channels=0,
                               subtitle_languages=(), crf=base.crf, preset=base.preset, priority=0,
                               description=base.description) == base
    assert profile.description == ("h264-720p with audio_languages jpn, eng; audio_channels 2; subtitle_languages "
                                   "eng; crf 20; preset slow; priority 5")
    same = configured_profile("same", {"base": "hevc-1080p"})
    assert same.description == f"as hevc-1080p: {BUILTIN_PROFILES['hevc-1080p'].description}"


@pytest.mark.parametrize("base", list(BUILTIN_PROFILES))
def test_the_definition_a_claim_carries_gives_back_the_same_profile(base):
    profile = configured_profile("mine", {"base": base, "priority": -3})
    definition = definition_of(profile)
    assert definition["base"] == base and definition["priority"] == -3
    assert configured_profile("mine", definition) == profile
    assert set(definition) - {"name", "base"} <= set(OVERRIDABLE)


@pytest.mark.parametrize("definition, field, words", [
    ({"base": "h264-720p", "crf": 52}, "crf", "0..51"),
    ({"base": "av1-1080p", "crf": 64}, "crf", "0..63"),
    ({"base": "h264-720p", "crf": "20"}, "crf", "must be an integer"),
    ({"base": "h264-720p", "height": 719}, "height", "even"),
    ({"base": "h264-720p", "height": 100_000}, "height", "16..4320"),
    ({"base": "h264-720p", "preset": "8"}, "preset", "ultrafast"),
    ({"base": "av1-1080p", "preset": "veryfast"}, "preset", "13"),
    ({"base": "av1-1080p", "containers": ["mov"]}, "containers", "not a container of av1-1080p"),
    ({"base": "h264-720p", "containers": []}, "containers", "non-empty"),
    ({"base": "h264-720p", "audio_languages": ["en"]}, "audio_languages", "ISO 639-2"),
    ({"base": "h264-720p", "audio_languages": "jpn"}, "audio_languages", "list"),
    ({"base": "h264-720p", "subtitle_languages": ["eng", "eng"]}, "subtitle_languages", "twice"),
    ({"base": "h264-720p", "audio_channels": 5}, "audio_channels", "0, 1, 2, 6"),
    ({"base": "h264-720p", "subtitles": "burn"}, "subtitles", "keep, drop"),
    ({"base": "h264-720p", "priority": 5000}, "priority", "-1000..1000"),
    ({"base": "h264-720p", "skip_bpp": -1}, "skip_bpp", "0..10"),
    ({"base": "h264-720p", "discard_larger": "yes"}, "discard_larger", "true or false"),
    ({"base": "h264-720p", "hdr": "keep"}, "hdr", "10-bit base"),
    ({"base": "h264-720p", "audio_bitrate": "128"}, "audio_bitrate", "32k..1024k"),
    ({"base": "health-check", "height": 720}, "height", "takes only description, priority"),
    ({"base": "h264-720p", "video_codec": "libx265"}, "video_codec", "unknown field"),
    ({"base": "h264-4k"}, "base", "unknown built-in profile"),
    ({"crf": 20}, "base", "required"),
])
def test_each_mistake_is_named_on_one_line(definition, field, words):
    with pytest.raises(ProfileDefinitionError) as info:
        configured_profile("mine", definition)
    [(named, message)] = info.value.problems
    assert named == field and words in message and "\n" not in message


def test_every_mistake_of_a_definition_is_listed():
    with pytest.raises(ProfileDefinitionError) as info:
        configured_profile("mine", {"base": "hevc-1080p", "crf": 99, "audio_channels": 3, "colour": "red"})
    assert [field for field, _ in info.value.problems] == ["crf", "audio_channels", "colour"]


class TestMasterConfig:
    def test_configured_profiles_follow_the_built_in_ones(self, tmp_path):
        config = load_config(write(tmp_path, "profiles:\n  anime: {base: h264-720p, audio_languages: [jpn, eng]}\n"
                                             "  archive: {base: hevc-1080p, crf: 22, containers: [mkv]}\n"))
        assert list(config.profiles) == [*BUILTIN_PROFILES, "anime", "archive"]
        assert config.profiles["archive"].containers == ("mkv",) and config.profiles["anime"].base == "h264-720p"
        assert [p.name for p in config.profiles.configured] == ["anime", "archive"]

    def test_the_list_of_built_in_names_still_narrows_the_table(self, tmp_path):
        config = load_config(write(tmp_path, "profiles: [hevc-1080p, h264-720p]\n"))
        assert list(config.profiles) == ["hevc-1080p", "h264-720p"]

    def test_the_watch_folder_may_use_a_configured_profile(self, tmp_path):
        config = load_config(write(tmp_path, "profiles: {anime: {base: h264-720p}}\n"
                                             "watch: {inbox: inbox, profile: anime}\n"))
        assert config.watch.profile in config.profiles

    @pytest.mark.parametrize("text, key, words", [
        ("profiles: {Anime: {base: h264-720p}}", "profiles.Anime", "not a profile name"),
        ("profiles: {h264-720p: {base: h264-720p, crf: 18}}", "profiles.h264-720p", "built-in profile's name"),
        ("profiles: {anime: {base: nope}}", "profiles.anime.base", "unknown built-in profile"),
        ("profiles: {anime: {crf: 18}}", "profiles.anime.base", "required"),
        ("profiles: {anime: {base: h264-720p, colour: red}}", "profiles.anime.colour", "unknown field"),
        ("profiles: {anime: {base: h264-720p, crf: high}}", "profiles.anime.crf", "must be an integer"),
        ("profiles: {anime: {base: h264-720p, crf: 60}}", "profiles.anime.crf", "0..51"),
        ("profiles: {anime: {base: h264-720p, audio_languages: [ja]}}", "profiles.anime.audio_languages",
         "ISO 639-2"),
        ("profiles: {anime: {base: h264-720p, audio_channels: 4}}", "profiles.anime.audio_channels", "0, 1, 2, 6"),
        ("profiles: {anime: h264-720p}", "profiles.anime", "must be a mapping"),
        ("profiles: 5", "profiles", "must be a mapping"),
        ("profiles: [nope]", "profiles", "unknown profile"),
        ("watch: {inbox: inbox, profile: anime}", "watch.profile", "must be one of"),
    ])
    def test_each_mistake_is_one_config_error_line(self, tmp_path, text, key, words):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert info.value.key == key and len(info.value.problems) == 1
        assert words in str(info.value) and str(info.value).count("\n") == 0

    def test_a_bad_profile_stops_the_master_at_start_up_with_one_line(self, tmp_path):
        path = write(tmp_path, "profiles:\n  anime: {base: h264-720p, audio_languages: [jpn, english]}\n")
        for args in (["--check-config"], []):
            result = subprocess.run([str(BIN / "converter-master"), "--config", str(path), *args],
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip() == ("config error: profiles.anime.audio_languages: 'english' is not an ISO "
                                             "639-2 code (three lower-case letters, e.g. 'eng')")


class TestWorkerPicksTheJobsProfile:
    def test_a_claim_with_a_definition_builds_the_configured_profile(self):
        profile = configured_profile("anime", ANIME)
        job = {"id": "j", "profile": "anime", PROFILE_DEFINITION: definition_of(profile)}
        assert ffmpeg.job_profile(job) == profile

    def test_a_claim_without_one_names_a_built_in(self):
        assert ffmpeg.job_profile({"id": "j", "profile": "hevc-1080p"}) is BUILTIN_PROFILES["hevc-1080p"]
        with pytest.raises(FatalError, match="unknown profile 'anime'"):
            ffmpeg.job_profile({"id": "j", "profile": "anime"})

    @pytest.mark.parametrize("change, words", [
        ({"audio_channels": 3}, "anime.audio_channels: must be one of 0, 1, 2, 6"),
        ({"deinterlace_mode": "send_field"}, "anime.deinterlace_mode: unknown field"),  # a newer master's field
        ({"base": "h266-8k"}, "anime.base: unknown built-in profile 'h266-8k'"),
        ({"name": "other"}, "not one of 'anime'"),
    ])
    def test_a_definition_the_worker_cannot_take_fails_the_job_as_fatal(self, change, words):
        definition = {**definition_of(configured_profile("anime", ANIME)), **change}
        with pytest.raises(FatalError) as info:
            ffmpeg.job_profile({"id": "j", "profile": "anime", PROFILE_DEFINITION: definition})
        assert words in str(info.value) and info.value.cause.value == "source"
