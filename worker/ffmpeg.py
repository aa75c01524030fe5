"""Calling FFmpeg: running it under a watchdog, probing media, checking the output.

The argument lists come from ``worker.ffmpeg_command``; what a probe returns (``MediaInfo``) is defined
in ``worker.media``. Neither of those imports this module.

The FFmpeg child runs in its own process group (so a kill reaches its helpers) and is told by
the kernel to die with the worker thread that started it (PR_SET_PDEATHSIG), even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from converter_common.profiles import BUILTIN_PROFILES, Profile, ProfileDefinitionError, configured_profile
from converter_common.protocol import PROFILE_DEFINITION
from worker.errors import FatalError, JobError, RetryableError, Shutdown
from worker.ffmpeg_command import audio_tracks, keeps_hdr, language_key, output_size
from worker.media import HDR_TRANSFERS, Colour, MasteringDisplay, MediaInfo

log = logging.getLogger("converter.worker")

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1


def profile_named(name: str) -> Profile:
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        raise FatalError(f"unknown profile {name!r}") from None


def job_profile(job: dict[str, Any]) -> Profile:
    """The profile of a claimed job: built from the definition the claim carries (a profile configured on the
    master, ``protocol.PROFILE_DEFINITION``), else the built-in of that name. A definition this worker cannot
    take (a field it does not know, a value out of range: a master newer than the worker, or a bug) fails the job,
    naming every problem; it never runs with a guess."""
    name = job.get("profile")
    definition = job.get(PROFILE_DEFINITION)
    if definition is None:
        return profile_named(name)
    if not isinstance(definition, dict) or definition.get("name", name) != name:
        raise FatalError(f"profile {name!r}: the claim's profile definition is not one of {name!r}")
    try:
        return configured_profile(name, definition)
    except ProfileDefinitionError as exc:
        raise FatalError(f"profile {name!r} as the master defines it cannot be run by this worker: {exc}") from None


class FfmpegStalled(RetryableError):
    """FFmpeg made no progress for ``stall_timeout`` seconds and was killed."""


class FfmpegTimedOut(RetryableError):
    """FFmpeg ran past the hard ``timeout`` and was killed."""


class FfmpegHostFailure(RetryableError):
    """FFmpeg failed because of this host (disk full, out of memory, GPU): another worker may succeed."""


class FfmpegRejectedInput(FatalError):
    """FFmpeg (or ffprobe) cannot read, decode or convert the input: the source is at fault."""


# Lines of FFmpeg's stderr that blame the host, not the input (compared in lower case). Not EIO or ENOMEM:
# FFmpeg also reports those for truncated or absurd sources.
HOST_TROUBLE = ("no space left on device", "disk quota exceeded", "read-only file system", "vk_error", "vulkan",
                "device creation failed")


def classify_failure(what: str, stderr: str) -> JobError:
    """The error for a failed FFmpeg or ffprobe run, from its stderr: host trouble anywhere in it makes a
    retryable failure of this worker; anything else (invalid data, no streams, moov atom not found,
    cannot decode) is a fatal failure of the source, with FFmpeg's last line as the reason."""
    host_line = next((line.strip() for line in reversed(stderr.splitlines())
                      if any(trouble in line.lower() for trouble in HOST_TROUBLE)), None)
    if host_line is not None:
        return FfmpegHostFailure(f"{what}: {host_line}")
    return FfmpegRejectedInput(f"{what}: {_last_line(stderr)}")


def probe(ffprobe: str, path: Path, hdr_metadata: bool = True) -> MediaInfo:
    """Read duration, first video/audio streams and the video's colour with ffprobe; FatalError if it cannot
    parse the file. HDR10 metadata often lives in the frames (HEVC SEI), not the container: with
    ``hdr_metadata``, for an HDR stream the first frame's side data is read too (a decode: ~0.5 s for 4K HEVC,
    worth it only where the output carries the metadata on)."""
    result = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise classify_failure(f"ffprobe cannot read {path.name}", result.stderr)
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), {})
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    return MediaInfo(
        duration=float(data.get("format", {}).get("duration") or 0.0),
        video_codec=video.get("codec_name"),
        width=video.get("width"),
        height=video.get("height"),
        audio_codec=audio[0].get("codec_name") if audio else None,
        audio_streams=len(audio),
        subtitle_codecs=tuple(s.get("codec_name") or "" for s in streams if s.get("codec_type") == "subtitle"),
        pix_fmt=video.get("pix_fmt"),
        sample_aspect=_ratio(video.get("sample_aspect_ratio")),
        rotation=_rotation(video),
        colour=colour_from_ffprobe(video, _first_frame_side_data(ffprobe, path)
                                   if hdr_metadata and _hdr_stream(video) else []),
        audio_languages=tuple(_stream_language(s) for s in audio),
        audio_channels=tuple(int(s.get("channels") or 0) for s in audio),
        subtitle_languages=tuple(_stream_language(s) for s in streams if s.get("codec_type") == "subtitle"),
    )


def _stream_language(stream: dict) -> str:
    tags = {key.lower(): value for key, value in (stream.get("tags") or {}).items()}
    return _language(tags.get("language"))


def _language(tag: str | None) -> str:
    return (tag or "").strip().lower() or "und"


def _hdr_stream(stream: dict) -> bool:
    return stream.get("color_transfer") in HDR_TRANSFERS


def _first_frame_side_data(ffprobe: str, path: Path) -> list[dict]:
    result = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
                             "-show_frames", "-print_format", "json", str(path)],
                            capture_output=True, text=True, timeout=120)
    frames = json.loads(result.stdout or "{}").get("frames", []) if result.returncode == 0 else []
    return frames[0].get("side_data_list", []) if frames else []


def colour_from_ffprobe(stream: dict, frame_side_data: list[dict]) -> Colour:
    """The colour tags of an ffprobe stream, with HDR10 and Dolby Vision side data from it or its first frame."""
    mastering = light_level = vision = None
    for side in [*stream.get("side_data_list", []), *frame_side_data]:
        kind = side.get("side_data_type", "").lower()
        if kind.startswith("mastering display") and "red_x" in side:
            chroma = [(_units(side[f"{c}_x"], 50000), _units(side[f"{c}_y"], 50000))
                      for c in ("red", "green", "blue", "white_point")]
            mastering = MasteringDisplay(*chroma, max_luminance=_units(side["max_luminance"], 10000),
                                         min_luminance=_units(side["min_luminance"], 10000))
        elif kind.startswith("content light level"):
            light_level = (int(side.get("max_content", 0)), int(side.get("max_average", 0)))
        elif kind.startswith("dovi configuration record"):
            vision = f"profile {side.get('dv_profile')}, level {side.get('dv_level')}"
        elif "dolby vision" in kind and vision is None:
            vision = "RPU"
    return Colour(_tag(stream.get("color_primaries")), _tag(stream.get("color_transfer")),
                  _tag(stream.get("color_space")), mastering, light_level, vision)


def probe_with_ffmpeg(binary: str, path: Path, hdr_metadata: bool = True) -> MediaInfo:
    """``probe`` for hosts without ffprobe (imageio-ffmpeg ships none): parse ``ffmpeg -i``'s stream summary."""
    result = subprocess.run([binary, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True,
                            errors="replace", timeout=120)
    text = result.stderr
    streams = _STREAM.findall(text)
    if "Duration:" not in text or not streams:
        raise classify_failure(f"ffmpeg cannot read {path.name}", text)
    hours, minutes, seconds = _DURATION.search(text).groups() if _DURATION.search(text) else ("0", "0", "0")
    video = next((rest for kind, _codec, rest in streams if kind == "Video" and "attached pic" not in rest), "")
    size, sar = _SIZE.search(video), _SAR.search(video)
    rotation = _ROTATION.search(text)
    return MediaInfo(
        duration=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        video_codec=next((codec for kind, codec, rest in streams if kind == "Video" and rest == video), None),
        width=int(size[1]) if size else None,
        height=int(size[2]) if size else None,
        audio_codec=next((codec for kind, codec, _ in streams if kind == "Audio"), None),
        audio_streams=sum(kind == "Audio" for kind, _, _ in streams),
        subtitle_codecs=tuple(codec for kind, codec, _ in streams if kind == "Subtitle"),
        pix_fmt=pix_fmt[1] if (pix_fmt := _PIX_FMT.match(video)) else None,
        sample_aspect=_ratio(f"{sar[1]}:{sar[2]}") if sar else 1.0,
        rotation=int(float(rotation[1])) % 360 if rotation else 0,
        colour=_colour_from_summary(binary, path, video, text, hdr_metadata),
        audio_languages=tuple(_language(lang) for lang, kind, _ in _TRACK.findall(text) if kind == "Audio"),
        audio_channels=tuple(_channels(rest) for lang, kind, rest in _TRACK.findall(text) if kind == "Audio"),
        subtitle_languages=tuple(_language(lang) for lang, kind, _ in _TRACK.findall(text) if kind == "Subtitle"),
    )


def _channels(summary: str) -> int:
    """Channels of an audio stream line's layout (``, 48000 Hz, 5.1(side), fltp``): 0 when not understood."""
    for item in summary.split(", ")[1:]:
        layout = item.split("(")[0].strip()
        if layout in _LAYOUTS:
            return _LAYOUTS[layout]
        if re.fullmatch(r"\d+(\.\d+)+", layout):
            return sum(int(n) for n in layout.split("."))  # 5.1 → 6, 7.1 → 8, 5.1.2 → 8
        if (count := re.fullmatch(r"(\d+) channels", layout)):
            return int(count[1])
    return 0


def _colour_from_summary(binary: str, path: Path, video: str, summary: str, hdr_metadata: bool) -> Colour:
    """Tags from the stream line (``yuv420p10le(tv, bt2020nc/bt2020/smpte2084, progressive)``); for an HDR
    stream and ``hdr_metadata``, the HDR10 metadata from the first frame as ``showinfo`` prints it."""
    matrix = primaries = transfer = None
    described = _COLOUR.search(video)
    for item in described[1].split(", ") if described else []:
        if "/" in item:
            matrix, primaries, transfer = (_tag(name) for name in item.split("/", 2))
        elif item not in _NOT_COLOUR:
            matrix = primaries = transfer = _tag(item)  # FFmpeg prints one name when all three are equal
    frame = ""
    if hdr_metadata and transfer in HDR_TRANSFERS:
        # one decoder thread: 0.37 s instead of 0.51 s for a 4K HEVC frame on 16 cores (frame threads start up idle)
        frame = subprocess.run([binary, "-hide_banner", "-nostdin", "-threads", "1", "-i", str(path), "-map", "0:v:0",
                                "-frames:v", "1",
                                "-vf", "showinfo", "-f", "null", "-"], capture_output=True, text=True, errors="replace",
                               timeout=120).stderr
    mastering, light, vision = _MASTERING.search(frame), _LIGHT.search(frame), _DOVI.search(summary)
    return Colour(primaries, transfer, matrix,
                  MasteringDisplay(*[(_units(mastering[i], 50000), _units(mastering[i + 1], 50000))
                                     for i in (1, 3, 5, 7)], max_luminance=_units(mastering[10], 10000),
                                   min_luminance=_units(mastering[9], 10000)) if mastering else None,
                  (int(light[1]), int(light[2])) if light else None,
                  f"profile {vision[1]}, level {vision[2]}" if vision else None)


_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio|Subtitle): (\w+)(.*)$", re.M)
# an audio or subtitle stream line: its language ("Stream #0:1[0x2](eng): Audio: aac ...") and the rest
_TRACK = re.compile(r"^\s*Stream #0:\d+(?:\[\w+\])?(?:\((\w+)\))?\S*: (Audio|Subtitle): \w+(.*)$", re.M)
_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4, "hexagonal": 6, "octagonal": 8,
            "hexadecagonal": 16, "cube": 8}
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})[, ]")
_PIX_FMT = re.compile(r"[^,]*, ([a-z][a-z0-9]+)\b")  # " (Main 10), yuv420p10le(tv, …), 3840x2160"
_SAR = re.compile(r"SAR (\d+):(\d+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_COLOUR = re.compile(r", \w+\(([^)]*)\)")
_NOT_COLOUR = {"tv", "pc", "progressive", "top first", "bottom first", "top coded first (swapped)",
               "bottom coded first (swapped)"}
_NUMBER = r"([\d.]+)"
_MASTERING = re.compile(r"mastering display.*?" + "".join(rf"{c}\({_NUMBER}[, ]+{_NUMBER}\)\s*"
                                                            for c in ("r", "g", "b", "wp"))
                        + rf"min_luminance={_NUMBER}, max_luminance={_NUMBER}", re.I)
_LIGHT = re.compile(r"MaxCLL=(\d+), MaxFALL=(\d+)")
_DOVI = re.compile(r"DOVI configuration record: .*?profile: (\d+), level: (\d+)")


def check_output(prober: Callable[[Path], MediaInfo], output: Path, profile: Profile, source: MediaInfo,
                 tolerance: float) -> MediaInfo:
    """Probe the converted file; FatalError naming what is wrong unless it is what the profile promises."""
    if not output.exists() or output.stat().st_size == 0:
        raise FatalError("output check failed: ffmpeg wrote no output")
    try:
        info = prober(output)
    except FatalError as exc:
        raise FatalError(f"output check failed: {exc}", cause=exc.cause) from None
    expected_size = output_size(profile, source)
    problems = []
    if info.video_codec != profile.codec:
        problems.append(f"video codec {info.video_codec}, expected {profile.codec}")
    if expected_size and (info.width, info.height) != expected_size:
        problems.append(f"size {info.width}x{info.height}, expected {expected_size[0]}x{expected_size[1]}")
    problems += _audio_problems(info, profile, source)
    transfer = source.colour.transfer if keeps_hdr(profile, source) else "bt709"
    if info.colour.transfer != transfer:
        problems.append(f"colour transfer {info.colour.transfer or 'untagged'}, expected {transfer}")
    allowed = max(tolerance, source.duration * 0.01)
    if source.duration > 0 and abs(info.duration - source.duration) > allowed:
        problems.append(f"duration {info.duration:.2f} s, source {source.duration:.2f} s (tolerance {allowed:.2f} s)")
    if problems:
        raise FatalError("output check failed: " + "; ".join(problems))
    return info


def _audio_problems(info: MediaInfo, profile: Profile, source: MediaInfo) -> list[str]:
    """The output's audio against the profile's track rules: how many streams, their languages, their channels."""
    tracks = audio_tracks(profile, source) or []
    if info.audio_streams != len(tracks):
        return [f"{info.audio_streams} audio streams, expected {len(tracks)}"]
    problems = []
    expected = [language_key(source.audio_languages[i]) for i in tracks if i < len(source.audio_languages)]
    got = [language_key(code) for code in info.audio_languages]
    if profile.audio_languages and len(expected) == len(got) and expected != got:
        problems.append(f"audio languages {', '.join(got)}, expected {', '.join(expected)}")
    if profile.audio_channels and any(n > profile.audio_channels for n in info.audio_channels):
        problems.append(f"audio channels {', '.join(map(str, info.audio_channels))}, expected at most "
                        f"{profile.audio_channels}")
    return problems


def run(command: list[str], *, duration: float, timeout: float, cancel: threading.Event,
        on_progress: Callable[[float], None] | None = None, stall_timeout: float | None = None,
        kill_grace: float = KILL_GRACE) -> float:
    """Run FFmpeg to completion and return the wall seconds it took.

    Progress comes from ``-progress pipe:1``: ``out_time_us`` against ``duration`` gives the percent.
    A watchdog kills the process group (SIGTERM, SIGKILL after ``kill_grace``) when ``cancel`` is
    set, when ``timeout`` passes, or when neither ``out_time_us`` nor ``frame`` moved for
    ``stall_timeout`` seconds.

    Raises Shutdown when ``cancel`` is set, FfmpegTimedOut / FfmpegStalled (RetryableError) when the
    watchdog fired, FfmpegHostFailure on a death by signal, and on an error exit what
    ``classify_failure`` makes of stderr.
    """
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=die_with_parent, text=True, bufsize=1)
    stderr_tail: deque[str] = deque(maxlen=20)
    drain = threading.Thread(target=lambda: stderr_tail.extend(process.stderr), daemon=True)
    drain.start()
    returncode = supervise(process, drain, "conversion", duration=duration, timeout=timeout, cancel=cancel,
                           on_progress=on_progress, stall_timeout=stall_timeout, kill_grace=kill_grace)
    elapsed = time.monotonic() - started
    if returncode < 0:
        raise FfmpegHostFailure(f"ffmpeg was killed by signal {-returncode}")
    if returncode != 0:
        raise classify_failure("ffmpeg failed", "".join(stderr_tail) or f"exit code {returncode}")
    return elapsed


def supervise(process: subprocess.Popen, drain: threading.Thread, what: str, *, duration: float, timeout: float,
              cancel: threading.Event, on_progress: Callable[[float], None] | None, stall_timeout: float | None,
              kill_grace: float) -> int:
    """Watch a started FFmpeg to its end under the watchdog (``run``'s rules) and return its exit code; the
    process group is killed and ``drain`` (its stderr reader) joined whatever happens. Raises Shutdown
    ("``what`` interrupted") when ``cancel`` is set, FfmpegTimedOut / FfmpegStalled when the watchdog fired."""
    killer = _Watchdog(process, timeout, cancel, stall_timeout, kill_grace)
    killer.start()
    try:
        _read_progress(process, killer, duration, on_progress)
        returncode = process.wait()
    finally:
        killer.stop()
        if process.poll() is None:
            kill_group(process, kill_grace)
        drain.join(timeout=5)
    if cancel.is_set():
        raise Shutdown(f"{what} interrupted")
    if killer.fired == "timeout":
        raise FfmpegTimedOut(f"ffmpeg exceeded its {timeout:.0f} s limit and was killed")
    if killer.fired == "stall":
        raise FfmpegStalled(f"ffmpeg made no progress for {stall_timeout:.0f} s and was killed")
    return returncode


def _read_progress(process: subprocess.Popen, killer: "_Watchdog", duration: float,
                   on_progress: Callable[[float], None] | None) -> None:
    """Feed the watchdog and the caller from FFmpeg's ``key=value`` progress lines."""
    seen: dict[str, str] = {}
    for line in process.stdout:
        key, _, value = line.strip().partition("=")
        if key not in ("out_time_us", "frame") or seen.get(key) == value:
            continue
        seen[key] = value
        killer.progressed()
        if key == "out_time_us" and value.isdigit() and on_progress is not None and duration > 0:
            on_progress(min(100.0, int(value) / 1e6 / duration * 100))


class _Watchdog(threading.Thread):
    """Kills the FFmpeg process group on cancel, past the hard timeout, or when progress stalls."""

    def __init__(self, process: subprocess.Popen, timeout: float, cancel: threading.Event,
                 stall_timeout: float | None = None, kill_grace: float = KILL_GRACE):
        super().__init__(daemon=True)
        self._process = process
        self._deadline = time.monotonic() + timeout
        self._cancel = cancel
        self._stall_timeout = stall_timeout
        self._kill_grace = kill_grace
        self._last_progress = time.monotonic()
        self._done = threading.Event()
        self.fired: str | None = None  # "timeout" or "stall" (not set on cancel)

    def progressed(self) -> None:
        self._last_progress = time.monotonic()

    def run(self) -> None:
        while not self._done.is_set():
            now = time.monotonic()
            if self._cancel.is_set():
                kill_group(self._process, self._kill_grace)
                return
            if now >= self._deadline or (self._stall_timeout and now - self._last_progress >= self._stall_timeout):
                self.fired = "timeout" if now >= self._deadline else "stall"
                log.warning("ffmpeg (pid %d): %s; killing its process group", self._process.pid,
                            "hard timeout" if self.fired == "timeout" else "no progress")
                kill_group(self._process, self._kill_grace)
                return
            self._done.wait(0.2)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=self._kill_grace + 1)


def kill_group(process: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _last_line(text: str) -> str:
    return next((l.strip() for l in reversed(text.splitlines()) if l.strip()), "no message")


def _ratio(text: str | None) -> float:
    """``"4:3"`` → 1.333; 1.0 for missing, ``0:1`` and nonsense."""
    num, _, den = (text or "").partition(":")
    try:
        value = int(num) / int(den)
    except (ValueError, ZeroDivisionError):
        return 1.0
    return value if value > 0 else 1.0


def _tag(name: str | None) -> str | None:
    return None if name in (None, "", "unknown", "unspecified", "reserved") else name


def _units(value: str, scale: int) -> int:
    """``"34000/50000"`` or ``"0.6800"`` in units of 1/``scale`` (50000 for chromaticity, 10000 for cd/m²)."""
    try:
        return round(Fraction(value) * scale)
    except (ValueError, ZeroDivisionError):
        return 0


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    rotate = stream.get("tags", {}).get("rotate", "0")
    return int(rotate) % 360 if rotate.lstrip("-").isdigit() else 0
