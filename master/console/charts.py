"""Small bar charts for the overview, as geometry the template writes into inline SVG (no script, no library)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 480, 120


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the bar's title (a tooltip, and what a screen reader says)


def bars(values: list[float], labels: list[str], width: int = WIDTH, height: int = HEIGHT) -> list[Bar]:
    """One bar per value, scaled to the largest; an empty bar keeps its place."""
    if not values:
        return []
    top = max(max(values), 1e-9)
    step = width / len(values)
    result = []
    for index, (value, label) in enumerate(zip(values, labels)):
        h = 0 if value <= 0 else max(1.0, value / top * (height - 2))
        result.append(Bar(x=round(index * step + 1, 1), y=round(height - h, 1), width=round(max(step - 2, 1), 1),
                          height=round(h, 1), label=label))
    return result


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
