import ast
import dataclasses
from pathlib import Path

import pytest

from converter_common.profiles import BUILTIN_PROFILES, track_rule_errors
from worker import ffmpeg, ffmpeg_command
from worker.errors import FatalError
from worker.media import MediaInfo


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


# Track rules (audio_languages, audio_channels, subtitle_languages): the command for each rule.
TRACKS = MediaInfo(2.0, "h264", 640, 360, "aac", audio_streams=4, subtitle_codecs=("subrip", "subrip", "ass"),
                   audio_languages=("eng", "fre", "jpn", "und"), audio_channels=(2, 6, 6, 1),
                   subtitle_languages=("fra", "eng", "jpn"))


def command(info=TRACKS, output="o.mp4", **rules):
    profile = dataclasses.replace(BUILTIN_PROFILES["h264-720p"], **rules)
    return " ".join(ffmpeg_command.build_command("ffmpeg", profile, Path("s.mkv"), Path(output), info=info))


def test_listed_languages_are_kept_in_the_lists_order_and_the_first_is_the_default():
    args = command(audio_languages=("jpn", "eng"))
    assert "-map 0:v:0 -map 0:a:2 -map 0:a:0 -vf" in args and "0:a:1" not in args and "0:a:3" not in args
    assert "-disposition:a:0 default -disposition:a:1 0" in args
    assert "-ac" not in args.split()  # channels kept unless asked


def test_und_is_kept_only_where_the_list_names_it_and_twins_match():
    assert "-map 0:a:3 -map 0:a:1 -vf" in command(audio_languages=("und", "fra"))  # fre in the source, fra listed
    assert "0:a:3" not in command(audio_languages=("eng",))


def test_a_source_without_any_listed_language_keeps_all_its_audio():
    args = command(audio_languages=("ger",))
    assert "-map 0:a:0 -map 0:a:1 -map 0:a:2 -map 0:a:3 -vf" in args and "-disposition:a:0 default" in args
    untagged = dataclasses.replace(TRACKS, audio_languages=())
    assert "-map 0:a:0 -map 0:a:1 -map 0:a:2 -map 0:a:3 -vf" in command(untagged, audio_languages=("eng",))


def test_channels_are_downmixed_per_output_stream_and_never_up():
    args = command(audio_languages=("jpn", "eng", "und"), audio_channels=2)
    assert "-ac:a:0 2" in args and "-ac:a:1" not in args and "-ac:a:2" not in args  # 6 → 2; 2 and 1 stay
    assert [a for a in command(audio_channels=6).split() if a.startswith("-ac")] == []  # nothing above 5.1


def test_default_profile_keeps_every_track_and_the_source_dispositions():
    args = command()
    assert "-map 0:a? -vf" in args and "-disposition" not in args and "-ac" not in args.split()
    assert "-map 0:s:0 -c:s:0 mov_text -map 0:s:1 -c:s:1 mov_text -map 0:s:2 -c:s:2 mov_text" in args


def test_subtitle_languages_filter_and_order_subtitles_mov_text_in_mp4():
    assert "-map 0:s:2 -c:s:0 mov_text -map 0:s:0 -c:s:1 mov_text -max" in command(subtitle_languages=("jpn", "fre"))
    assert "-map 0:s:1 -c:s:0 copy -max" in command(output="o.mkv", subtitle_languages=("eng",))
    assert "0:s" not in command(subtitle_languages=("ger",))  # none of them: no subtitles (audio is different)
    assert "0:s" not in command(subtitles="drop", subtitle_languages=("eng",))


def test_without_a_probe_the_first_audio_stream_as_before():
    args = command(info=None, audio_languages=("jpn",), audio_channels=2)
    assert "-map 0:a:0? -vf" in args and "-ac:a:0 2" in args and "-disposition" not in args


def test_track_rules_are_validated_in_one_line_each():
    assert all(track_rule_errors(p) == [] for p in BUILTIN_PROFILES.values())
    bad = dataclasses.replace(BUILTIN_PROFILES["h264-720p"], audio_languages=("en", "jpn"),
                              subtitle_languages=("ENG",), audio_channels=5)
    errors = track_rule_errors(bad)
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    assert "audio_languages 'en' is not an ISO 639-2 code" in errors[0] and "audio_channels 5" in errors[2]



def test_get_api_profiles_shows_the_track_rules():
    from master.handlers.profiles import profile_to_dict

    rules = dataclasses.replace(BUILTIN_PROFILES["h264-720p"], audio_languages=("jpn", "eng"), audio_channels=2)
    assert {k: profile_to_dict(rules)[k] for k in ("audio_languages", "audio_channels", "subtitle_languages")} == {
        "audio_languages": ["jpn", "eng"], "audio_channels": 2, "subtitle_languages": []}


def test_the_output_check_holds_the_output_to_the_track_rules():
    profile = dataclasses.replace(BUILTIN_PROFILES["h264-720p"], audio_languages=("jpn", "eng"), audio_channels=2)
    good = dataclasses.replace(TRACKS, width=1280, height=720, audio_streams=2, audio_languages=("jpn", "eng"),
                               audio_channels=(2, 2), subtitle_codecs=(), subtitle_languages=())
    assert ffmpeg._audio_problems(good, profile, TRACKS) == []
    swapped = dataclasses.replace(good, audio_languages=("eng", "jpn"), audio_channels=(6, 2))
    assert ffmpeg._audio_problems(swapped, profile, TRACKS) == ["audio languages eng, jpn, expected jpn, eng",
                                                                "audio channels 6, 2, expected at most 2"]
    assert ffmpeg._audio_problems(good, BUILTIN_PROFILES["h264-720p"], TRACKS) == ["2 audio streams, expected 4"]


@pytest.mark.parametrize("line, language, channels", [
    ("  Stream #0:1(eng): Audio: aac (LC), 48000 Hz, stereo, fltp (default)", "eng", 2),
    ("  Stream #0:2[0x1101](jpn): Audio: ac3 (AC-3 / 0x332D4341), 48000 Hz, 5.1(side), fltp, 384 kb/s", "jpn", 6),
    ("  Stream #0:3: Audio: flac, 96000 Hz, 7.1, s32 (24 bit)", "und", 8),
    ("  Stream #0:4(und): Audio: pcm_s16le, 44100 Hz, mono, s16, 705 kb/s", "und", 1),
    ("  Stream #0:5(fre): Audio: opus, 48000 Hz, 5 channels, fltp", "fre", 5),
    ("  Stream #0:6[0x2](FRA): Audio: eac3, 48000 Hz, 5.1.2, fltp", "fra", 8),
])
def test_the_ffmpeg_i_summary_gives_each_audio_streams_language_and_channels(line, language, channels):
    (lang, kind, rest), = ffmpeg._TRACK.findall(line)
    assert (ffmpeg._language(lang), kind, ffmpeg._channels(rest)) == (language, "Audio", channels)
