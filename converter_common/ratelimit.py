"""A token bucket for transfer bandwidth limits (bytes per second), shared by any number of streams.

``reserve(n)`` takes ``n`` tokens at once, going into debt if need be, and says how long the caller must
wait before sending them; the debt makes later callers wait too, so the long-run rate is exact
whatever the chunk size. It never sleeps itself: the worker's threads call ``consume`` (which does),
the master's IOLoop awaits ``asyncio.sleep(bucket.reserve(n))``. A lock makes it safe across threads.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

MiB = 1 << 20


class TokenBucket:
    """``rate`` bytes/s; it starts empty and saves up at most ``burst`` bytes while idle.

    The default burst, 100 ms of the rate (64 KiB..32 MiB), must cover the caller's own work between two
    reservations (receiving and writing a 1 MiB chunk): with 10 ms of it the worker fell 6-8 % short of
    a 100 MB/s limit, because tokens beyond the burst are lost while the caller is busy. Starting empty
    keeps a fresh transfer from exceeding the rate at its start.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else min(max(rate / 10, 64 * 1024), 32 * MiB))
        self._clock = clock
        self._tokens = 0.0
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens; returns the seconds to wait before using them (0 if they were there)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def consume(self, n: int, sleep: Callable[[float], None] = time.sleep, min_sleep: float = 0.05) -> None:
        """Take ``n`` tokens; sleep once the debt is worth ``min_sleep`` seconds (it is carried until then).

        Fewer, longer pauses: each pause lets the TCP window close, and refilling it after every 10 ms pause
        (1 MiB at 100 MB/s) cost the worker 5-8 % of a 100 MB/s limit on this machine.
        """
        delay = self.reserve(n)
        if delay >= min_sleep:
            sleep(delay)


def bucket_for(rate: int) -> TokenBucket | None:
    """A bucket for a configured limit; 0 means unlimited (None)."""
    return TokenBucket(rate) if rate > 0 else None
