"""Human output: aligned tables and ``key: value`` blocks."""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

from converterctl.progress import human_bytes


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def fields(data: dict[str, Any], names: Sequence[str]) -> str:
    width = max(len(n) for n in names)
    return "\n".join(f"{n + ':':<{width + 1}} {format_value(n, data.get(n))}" for n in names if n in data)


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_at") and isinstance(value, (int, float)):
        return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))} ({ago(value)})"
    if name.endswith("_size") and isinstance(value, int):
        return f"{human_bytes(value)} ({value} bytes)"
    if name == "progress" and isinstance(value, (int, float)):
        return f"{value:.1f}%"
    return str(value)


def ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "-"
    seconds = int((time.time() if now is None else now) - timestamp)
    amount = next((f"{abs(seconds) // size}{unit}" for unit, size in (("d", 86400), ("h", 3600), ("m", 60))
                   if abs(seconds) >= size), f"{abs(seconds)}s")
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"
