"""Log how a transfer is going (bytes, MB/s) at a steady interval, and sum it up at the end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("converter.worker")


@dataclass
class TransferProgress:
    label: str
    total: int | None
    interval: float
    on_bytes: Callable[[int], None] | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last_log: float = field(default_factory=time.monotonic)

    def add(self, n: int) -> None:
        self.done += n
        if self.on_bytes is not None:
            self.on_bytes(n)
        now = time.monotonic()
        if now - self._last_log >= self.interval:
            self._last_log = now
            pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
            log.info("%s: %d bytes%s at %.1f MB/s", self.label, self.done, pct, self.rate_mb_s(now))

    def rate_mb_s(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return self.done / elapsed / 1e6 if elapsed > 0 else 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def finish(self) -> None:
        log.info("%s: done, %d bytes in %.2f s (%.1f MB/s)", self.label, self.done, self.elapsed, self.rate_mb_s())
