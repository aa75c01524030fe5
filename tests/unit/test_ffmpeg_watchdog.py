"""ffmpeg.run's watchdog against stub FFmpegs (tiny shell scripts): stall, progress, hard timeout, no orphan."""

import stat
import threading
import time

import pytest

from tests.fixtures import process_alive

from worker import ffmpeg

pytestmark = pytest.mark.integration  # runs processes (shell stubs), so not in `make test-unit`


def stub(tmp_path, body):
    path = tmp_path / "ffmpeg-stub"
    path.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/stub.pid\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return [str(path)]


def test_a_stalled_ffmpeg_that_ignores_sigterm_is_killed_and_leaves_no_orphan(tmp_path):
    # One progress block, then silence; SIGTERM ignored (like the Vulkan decode hang); a child in its group.
    command = stub(tmp_path, "trap '' TERM\necho out_time_us=500000\nsleep 600 &\necho $! > "
                             f"{tmp_path}/child.pid\nexec sleep 600")
    seen = []
    started = time.monotonic()
    with pytest.raises(ffmpeg.FfmpegStalled, match="no progress for 1 s"):
        ffmpeg.run(command, duration=2.0, timeout=60, cancel=threading.Event(), on_progress=seen.append,
                   stall_timeout=1.0, kill_grace=0.3)
    assert time.monotonic() - started < 5
    assert seen == [25.0]
    for name in ("stub.pid", "child.pid"):
        assert not process_alive(int((tmp_path / name).read_text()))


def test_steady_progress_keeps_a_slow_ffmpeg_alive(tmp_path):
    lines = "".join(f"echo frame={i}\necho out_time_us={i * 100000}\nsleep 0.25\n" for i in range(1, 6))
    seen = []
    ffmpeg.run(stub(tmp_path, lines), duration=1.0, timeout=60, cancel=threading.Event(), on_progress=seen.append,
               stall_timeout=1.0, kill_grace=0.3)
    assert seen[-1] == pytest.approx(50.0) and len(seen) == 5


def test_the_hard_timeout_still_applies(tmp_path):
    lines = "while true; do echo out_time_us=$(date +%s%N | cut -c1-16); sleep 0.1; done"
    with pytest.raises(ffmpeg.FfmpegTimedOut):
        ffmpeg.run(stub(tmp_path, lines), duration=1.0, timeout=1.0, cancel=threading.Event(), stall_timeout=10,
                   kill_grace=0.3)
    assert not process_alive(int((tmp_path / "stub.pid").read_text()))
