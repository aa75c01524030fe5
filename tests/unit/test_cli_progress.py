"""converterctl's progress display: bars, rates, ETA, and the plain-line mode used in pipes and logs."""

import io

from converterctl.progress import JobBoard, Rate, TransferBar, bar, duration, human_bytes


def test_bar_fills_in_proportion_and_clamps():
    assert bar(0, 10) == "[----------]"
    assert bar(50, 10) == "[#####-----]"
    assert bar(250, 10) == "[##########]"


def test_human_units_and_durations():
    assert human_bytes(999) == "999 B"
    assert human_bytes(12_300_000) == "12.3 MB"
    assert duration(None) == "--:--"
    assert duration(75) == "1:15"
    assert duration(3 * 3600 + 61) == "3:01:01"


def test_rate_and_eta_from_samples():
    rate = Rate()
    rate.sample(0, 100.0)
    assert rate.per_second is None
    rate.sample(50, 110.0)
    assert rate.per_second == 5.0
    assert rate.eta(100) == 10.0


def test_rate_restarts_when_the_value_goes_back():
    rate = Rate()
    rate.sample(80, 0.0)
    rate.sample(90, 10.0)
    rate.sample(10, 20.0)  # a retried attempt starts again from zero
    assert rate.per_second is None


def test_transfer_bar_prints_one_line_per_ten_percent_when_not_a_terminal():
    out = io.StringIO()
    progress = TransferBar("upload a.mkv", 1000, stream=out)
    for _ in range(100):
        progress.update(10)
    progress.close()
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[-1].startswith("upload a.mkv") and "100.0%" in lines[-1]


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    progress = TransferBar("x", 10, stream=out, enabled=False)
    progress.update(10)
    progress.close()
    assert out.getvalue() == ""


def test_job_board_shows_speed_and_eta_of_processing_jobs():
    out = io.StringIO()
    board = JobBoard(out)
    job = {"id": "j1", "status": "processing", "progress": 10.0, "source_size": 100_000_000}
    board.show([job], now=0.0)
    board.show([dict(job, progress=30.0)], now=10.0)  # 20 % of 100 MB in 10 s
    board.show([dict(job, progress=31.0)], now=11.0)  # under a step: no new line
    board.show([dict(job, status="completed", progress=100.0)], now=20.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "30.0%" in lines[1] and "2.0 MB/s" in lines[1] and "ETA 0:35" in lines[1]
    assert "completed" in lines[2] and "100.0%" in lines[2]


def test_job_board_shows_the_error_of_a_failed_job():
    out = io.StringIO()
    JobBoard(out).show([{"id": "j2", "status": "failed", "progress": 5, "error": "ffmpeg exited 1"}])
    assert "failed" in out.getvalue() and "ffmpeg exited 1" in out.getvalue()
