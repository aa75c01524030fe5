"""Bounded retries with exponential backoff, as a small value object."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import tenacity

from worker.errors import RetryableError

T = TypeVar("T")
log = logging.getLogger("converter.worker")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait ``min(cap, base_delay * factor ** (n - 1))``.

    With the seed's values (3, 2 s, ×2) the waits after failures 1, 2, 3 are 2 s, 4 s, 8 s;
    the third failure is final, so only 2 s and 4 s are ever slept.
    """

    attempts: int = 3
    base_delay: float = 2.0
    factor: float = 2.0
    cap: float = 60.0
    sleep: Callable[[float], None] = field(default=tenacity.nap.sleep, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base_delay * self.factor ** (failures - 1))

    def call(self, fn: Callable[[], T], *, what: str, on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Run ``fn``; retry it on ``RetryableError`` only; re-raise the last error when attempts run out."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            log.warning("%s failed (try %d/%d): %s; retrying in %.1f s", what, state.attempt_number,
                        self.attempts, exc, state.next_action.sleep)
            if on_retry is not None:
                on_retry(exc)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=tenacity.retry_if_exception_type(RetryableError),
            before_sleep=before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(fn)
