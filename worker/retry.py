"""Bounded retries with exponential backoff, as a small value object."""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import tenacity

from worker.errors import RetryableError, Shutdown

T = TypeVar("T")
log = logging.getLogger("converter.worker")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait ``min(cap, base_delay * factor ** (n - 1))``.

    With the seed's values (3, 2 s, ×2) the waits after failures 1, 2, 3 are 2 s, 4 s, 8 s;
    the third failure is final, so only 2 s and 4 s are ever slept.

    With ``window`` set, tries go on however many it takes, as long as the next one starts within
    ``window`` seconds of the first.
    """

    attempts: int = 3
    base_delay: float = 2.0
    factor: float = 2.0
    cap: float = 60.0
    window: float | None = None
    sleep: Callable[[float], None] = field(default=tenacity.nap.sleep, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base_delay * self.factor ** (failures - 1))

    def within(self, window: float, cap: float) -> "RetryPolicy":
        """This policy's backoff, at most ``cap`` between tries, retrying for ``window`` seconds."""
        return dataclasses.replace(self, window=window, cap=min(self.cap, cap))

    def call(self, fn: Callable[[], T], *, what: str, on_retry: Callable[[BaseException], None] | None = None,
             retry_on: type[BaseException] = RetryableError, cancel: threading.Event | None = None) -> T:
        """Run ``fn``; retry it on ``retry_on`` only; re-raise the last error when the tries run out.

        A set ``cancel`` ends a wait between tries with ``Shutdown``.
        """

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            log.warning("%s failed (%s): %s; retrying in %.1f s", what, self._progress(state), exc,
                        state.next_action.sleep)
            if on_retry is not None:
                on_retry(exc)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_before_delay(self.window) if self.window is not None
            else tenacity.stop_after_attempt(self.attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=tenacity.retry_if_exception_type(retry_on),
            before_sleep=before_sleep,
            sleep=self.sleep if cancel is None else _interruptible(cancel, what),
            reraise=True,
        )
        return retrying(fn)

    def _progress(self, state: tenacity.RetryCallState) -> str:
        if self.window is None:
            return f"try {state.attempt_number}/{self.attempts}"
        return f"try {state.attempt_number}, {state.seconds_since_start:.0f} s of {self.window:.0f} s"


def _interruptible(cancel: threading.Event, what: str) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if cancel.wait(seconds):
            raise Shutdown(f"{what} interrupted")
    return sleep
