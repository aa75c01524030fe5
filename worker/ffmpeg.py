"""Everything about calling FFmpeg: profile → argument list, running it, probing media.

The FFmpeg child runs in its own process group (so a kill reaches its helpers) and is told by
the kernel to die with the worker thread that started it (PR_SET_PDEATHSIG), even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converter_common.profiles import BUILTIN_PROFILES, Profile
from worker.errors import FatalError, RetryableError, Shutdown

log = logging.getLogger("converter.worker")

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1


def profile_named(name: str) -> Profile:
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        raise FatalError(f"unknown profile {name!r}") from None


def build_command(binary: str, profile: Profile, source: Path, output: Path) -> list[str]:
    """The FFmpeg argument list for ``profile``: first video stream, first audio stream if any."""
    args = [
        binary, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
        "-i", str(source),
        "-map", "0:v:0", "-map", "0:a:0?",
        "-vf", f"scale=-2:{profile.height}",  # keep the aspect ratio, width rounded to even
        "-c:v", profile.video_codec, "-preset", profile.preset, "-crf", str(profile.crf), "-pix_fmt", "yuv420p",
        "-c:a", profile.audio_codec, "-b:a", profile.audio_bitrate,
    ]
    if output.suffix.lower() in (".mp4", ".mov"):
        args += ["-movflags", "+faststart"]
    return args + ["-progress", "pipe:1", str(output)]


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    video_codec: str | None
    width: int | None
    height: int | None
    audio_codec: str | None


def probe(ffprobe: str, path: Path) -> MediaInfo:
    """Read duration and first video/audio streams with ffprobe; FatalError if it cannot parse the file."""
    result = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise FatalError(f"ffprobe cannot read {path.name}: {_last_line(result.stderr)}")
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    return MediaInfo(
        duration=float(data.get("format", {}).get("duration") or 0.0),
        video_codec=video.get("codec_name"),
        width=video.get("width"),
        height=video.get("height"),
        audio_codec=audio.get("codec_name"),
    )


def run(command: list[str], *, duration: float, timeout: float, cancel: threading.Event,
        on_progress: Callable[[float], None] | None = None) -> float:
    """Run FFmpeg to completion and return the wall seconds it took.

    Raises Shutdown when ``cancel`` is set, RetryableError on a timeout or a death by signal,
    FatalError when FFmpeg itself reports an error (its last stderr line is the message).
    """
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=_die_with_parent, text=True, bufsize=1)
    stderr_tail: deque[str] = deque(maxlen=20)
    drain = threading.Thread(target=lambda: stderr_tail.extend(process.stderr), daemon=True)
    drain.start()
    killer = _Watchdog(process, timeout, cancel)
    killer.start()
    try:
        for line in process.stdout:
            if on_progress is not None and line.startswith("out_time_us=") and duration > 0:
                value = line.split("=", 1)[1].strip()
                if value.isdigit():
                    on_progress(min(100.0, int(value) / 1e6 / duration * 100))
        returncode = process.wait()
    finally:
        killer.stop()
        if process.poll() is None:
            _kill_group(process)
        drain.join(timeout=5)
    elapsed = time.monotonic() - started
    if cancel.is_set():
        raise Shutdown("conversion interrupted")
    if killer.fired:
        raise RetryableError(f"ffmpeg exceeded its {timeout:.0f} s limit and was killed")
    if returncode < 0:
        raise RetryableError(f"ffmpeg was killed by signal {-returncode}")
    if returncode != 0:
        message = next((l.strip() for l in reversed(stderr_tail) if l.strip()), f"exit code {returncode}")
        raise FatalError(f"ffmpeg failed: {message}")
    return elapsed


class _Watchdog(threading.Thread):
    """Kills the FFmpeg process group when the job is cancelled or the hard timeout passes."""

    def __init__(self, process: subprocess.Popen, timeout: float, cancel: threading.Event):
        super().__init__(daemon=True)
        self._process = process
        self._deadline = time.monotonic() + timeout
        self._cancel = cancel
        self._done = threading.Event()
        self.fired = False

    def run(self) -> None:
        while not self._done.is_set():
            if self._cancel.is_set() or time.monotonic() >= self._deadline:
                self.fired = not self._cancel.is_set()
                _kill_group(self._process)
                return
            self._done.wait(0.2)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=KILL_GRACE + 1)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _last_line(text: str) -> str:
    return next((l.strip() for l in reversed(text.splitlines()) if l.strip()), "no message")
