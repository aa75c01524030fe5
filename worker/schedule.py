"""``worker.schedule``: the local-time windows in which a worker claims jobs (outside them it claims nothing).

A window is ``[DAYS ]HH:MM-HH:MM``: ``22:00-07:00`` (every day, past midnight into the next), ``sat,sun 00:00-24:00``,
``mon-fri 18:30-23:00``. Days name the day a window starts on; an end at or before the start runs into the next day.
No windows (the default): always open. Times are the worker's local wall clock.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$")
DAY_MINUTES = 24 * 60


class ScheduleError(ValueError):
    """A window that cannot be read; the message says why."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # weekday numbers (Monday 0) the window starts on
    start: int  # minutes after midnight
    end: int  # minutes after midnight, up to 24:00; at or before ``start``: on the next day

    def contains(self, moment: dt.datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        today, yesterday = moment.weekday(), (moment.weekday() - 1) % 7
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()
    texts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, texts: tuple[str, ...] | list[str]) -> "Schedule":
        return cls(tuple(parse_window(text) for text in texts), tuple(texts))

    def is_open(self, moment: dt.datetime) -> bool:
        return not self.windows or any(window.contains(moment) for window in self.windows)

    def next_change(self, moment: dt.datetime) -> dt.datetime | None:
        """The first minute boundary after ``moment`` where ``is_open`` differs; None when it never does."""
        if not self.windows:
            return None
        now_open = self.is_open(moment)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        edges = sorted({midnight + dt.timedelta(days=day, minutes=minute)
                        for day in range(0, 9) for window in self.windows for minute in (window.start, window.end)})
        return next((edge for edge in edges if edge > moment and self.is_open(edge) != now_open), None)

    def report(self, moment: dt.datetime) -> dict:
        """What the worker's registration tells the master (``GET /api/workers`` shows it)."""
        change = self.next_change(moment)
        return {"windows": list(self.texts), "open": self.is_open(moment),
                "next_change": None if change is None else change.timestamp()}


def parse_window(text: str) -> Window:
    match = _WINDOW.match(text.strip().lower())
    if match is None:
        raise ScheduleError(f"{text!r} is not a window: use [DAYS ]HH:MM-HH:MM, e.g. 22:00-07:00 or"
                            " sat,sun 00:00-24:00")
    start, end = _minutes(match["start"], text), _minutes(match["end"], text)
    if start == DAY_MINUTES:
        raise ScheduleError(f"{text!r}: a window cannot start at 24:00")
    if start == end:
        raise ScheduleError(f"{text!r}: a window needs an end different from its start (00:00-24:00 is all day)")
    return Window(_days(match["days"], text), start, end)


def _minutes(clock: str, text: str) -> int:
    hours, minutes = (int(part) for part in clock.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ScheduleError(f"{text!r}: {clock} is not a time of day (00:00..24:00)")
    return hours * 60 + minutes


def _days(spec: str | None, text: str) -> frozenset[int]:
    if spec is None:
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ScheduleError(f"{text!r}: days are {', '.join(DAYS)}, listed with commas or as ranges (mon-fri)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)
