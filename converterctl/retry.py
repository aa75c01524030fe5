"""How long converterctl keeps trying when the master is away: a small value object.

The worker has its own (``worker.retry``, on tenacity); converterctl only needs ``requests``, so it
counts its waits itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; after failure n wait ``min(cap, base_delay * factor ** (n - 1))``."""

    attempts: int
    base_delay: float
    factor: float = 2.0
    cap: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base_delay * self.factor ** (failures - 1))

    def exhausted(self, failures: int) -> bool:
        return failures >= self.attempts

    @property
    def window(self) -> float:
        """Seconds slept in all before the last attempt: the longest outage it rides out."""
        return sum(self.delay(n) for n in range(1, self.attempts))


# 0.5, 1, 2, 4, 8, then 10 s apart: 12 attempts span about 75 s, enough for a master to restart.
UPLOAD_RETRY = RetryPolicy(attempts=12, base_delay=0.5, factor=2.0, cap=10.0)
