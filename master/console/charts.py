"""Small bar charts for the overview, as geometry the template writes into inline SVG (no script, no library)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

WIDTH, HEIGHT = 480, 112  # the bars' area; captions go below it, in a 140-high view box


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the bar's title (a tooltip, and what a screen reader says)
    caption: str = ""  # a short text under the bar, on some bars only


@dataclass(frozen=True)
class Chart:
    bars: list[Bar] = field(default_factory=list)
    top: str = ""  # what the tallest bar stands for

    @property
    def summary(self) -> str:
        return ", ".join(bar.label for bar in self.bars)


def chart(values: list[float], labels: list[str], captions: list[str] | None = None,
          unit: Callable[[float], str] = lambda value: f"{value:g}") -> Chart:
    """One bar per value, scaled to the largest; an empty bar keeps its place."""
    if not values:
        return Chart()
    top = max(values)
    scale = max(top, 1e-9)
    step = WIDTH / len(values)
    captions = captions or [""] * len(values)
    bars = []
    for index, (value, label, caption) in enumerate(zip(values, labels, captions)):
        h = 0 if value <= 0 else max(1.0, value / scale * (HEIGHT - 14))
        bars.append(Bar(x=round(index * step + 1, 1), y=round(HEIGHT - h, 1), width=round(max(step - 2, 1), 1),
                        height=round(h, 1), label=label, caption=caption))
    return Chart(bars=bars, top=f"max {unit(top)}" if top > 0 else "")


def hour_captions(hours: int) -> list[str]:
    """"−24 h" … "now" every six hours (the bars are the last ``hours`` hours, the current one last)."""
    captions = []
    for index in range(hours):
        ago = hours - 1 - index
        captions.append("" if ago % 6 else "now" if ago == 0 else f"−{ago} h")
    return captions


def hourly(rows: list[tuple[int, int, int, int]], hours: int, now: float) -> list[dict[str, int]]:
    """``JobStore.finished_per_hour`` with the empty hours filled in: oldest first, the current hour last."""
    by_hour = {hour: (jobs, source, output) for hour, jobs, source, output in rows}
    first = (int(now // 3600) - hours + 1) * 3600
    filled = []
    for index in range(hours):
        hour = first + index * 3600
        jobs, source, output = by_hour.get(hour, (0, 0, 0))
        filled.append({"hour": hour, "jobs": jobs, "source_bytes": source, "output_bytes": output})
    return filled
