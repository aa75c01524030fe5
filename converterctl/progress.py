"""Progress display: one bar per transfer, a block of bars for ``watch``; plain lines when not a terminal.

On a terminal a bar is redrawn in place (``\\r``, or cursor-up for a block) at most ``REDRAW`` times a
second. Into a pipe or file each bar prints a line only when it crosses another ``LINE_STEP`` percent
or changes state, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

WIDTH = 24
REDRAW = 0.2  # seconds between redraws on a terminal
LINE_STEP = 10.0  # percent between lines when not on a terminal


def bar(percent: float, width: int = WIDTH) -> str:
    filled = int(round(width * max(0.0, min(percent, 100.0)) / 100))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 99 * 3600:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Rate:
    """Throughput since the first sample: units per second, and the time left to reach ``total``."""

    start_value: float | None = None
    start_time: float = 0.0
    value: float = 0.0
    now: float = 0.0

    def sample(self, value: float, now: float) -> None:
        if self.start_value is None or value < self.value:
            self.start_value, self.start_time = value, now
        self.value, self.now = value, now

    @property
    def per_second(self) -> float | None:
        elapsed = self.now - self.start_time
        if self.start_value is None or elapsed <= 0.2 or self.value <= self.start_value:
            return None
        return (self.value - self.start_value) / elapsed

    def eta(self, total: float) -> float | None:
        rate = self.per_second
        return None if not rate else max(0.0, total - self.value) / rate


@dataclass
class TransferBar:
    """``label  [####----]  45.0%  12.3 MB / 27.0 MB  110.2 MB/s  ETA 0:03`` for an upload or download."""

    label: str
    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    done: int = 0
    _rate: Rate = field(default_factory=Rate)
    _last_draw: float = 0.0
    _last_step: float = -1.0

    def __post_init__(self) -> None:
        self._tty = self.stream.isatty()

    def start_at(self, offset: int) -> None:
        self.done = offset
        self._rate.sample(offset, time.monotonic())

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        self._rate.sample(self.done, now)
        if self._tty and now - self._last_draw >= REDRAW:
            self._draw("\r", "")
            self._last_draw = now
        elif not self._tty and self.percent - self._last_step >= LINE_STEP:
            self._last_step = self.percent - self.percent % LINE_STEP
            self._draw("", "\n")

    def close(self) -> None:
        self._draw("\r" if self._tty else "", "\n")

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else 100.0 * self.done / self.total

    def line(self) -> str:
        rate = self._rate.per_second
        speed = f"{human_bytes(rate)}/s" if rate else "-- MB/s"
        return (f"{self.label}  {bar(self.percent)} {self.percent:5.1f}%  {human_bytes(self.done)} / "
                f"{human_bytes(self.total)}  {speed}  ETA {duration(self._rate.eta(self.total))}")

    def _draw(self, prefix: str, suffix: str) -> None:
        if self.enabled:
            self.stream.write(f"{prefix}{self.line()}\x1b[K{suffix}" if self._tty else f"{self.line()}{suffix}")
            self.stream.flush()


class JobBoard:
    """The ``watch`` display: one line per job, percent, source MB/s through the converter, ETA."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._tty = stream.isatty()
        self._rates: dict[str, Rate] = {}
        self._printed: dict[str, tuple[str, float]] = {}
        self._drawn_lines = 0

    def show(self, jobs: list[dict], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        lines = [self._line(job, now) for job in jobs]
        if self._tty:
            up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
            self.stream.write(up + "".join(f"{line}\x1b[K\n" for line in lines))
            self._drawn_lines = len(lines)
        else:
            for job, line in zip(jobs, lines):
                if self._worth_a_line(job):
                    self.stream.write(line + "\n")
        self.stream.flush()

    def _line(self, job: dict, now: float) -> str:
        percent = float(job.get("progress") or 0.0)
        if job["status"] == "completed":
            percent = 100.0
        rate = self._rates.setdefault(job["id"], Rate())
        if job["status"] == "processing":
            rate.sample(percent, now)
        per_second = rate.per_second if job["status"] == "processing" else None
        size = job.get("source_size") or 0
        speed = f"{human_bytes(per_second / 100 * size)}/s" if per_second else "-- MB/s"
        eta = duration(rate.eta(100.0)) if per_second else "--:--"
        tail = f"  {job['error']}" if job["status"] == "failed" and job.get("error") else ""
        return (f"{job['id']:<18} {job['status']:<10} {bar(percent)} {percent:5.1f}%  {speed:>11}  "
                f"ETA {eta}{tail}")

    def _worth_a_line(self, job: dict) -> bool:
        percent = float(job.get("progress") or 0.0)
        last = self._printed.get(job["id"])
        if last is not None and last[0] == job["status"] and percent - last[1] < LINE_STEP:
            return False
        self._printed[job["id"]] = (job["status"], percent - percent % LINE_STEP)
        return True
