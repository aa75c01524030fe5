"""Wakes long-polling workers the moment a job becomes claimable."""

from __future__ import annotations

import datetime

import tornado.locks


class WakeUpSignal:
    """A condition on the IOLoop: claim handlers wait on it, anything that makes a job pending sends it."""

    def __init__(self) -> None:
        self._condition = tornado.locks.Condition()

    def send(self) -> None:
        self._condition.notify_all()

    async def wait(self, seconds: float) -> None:
        await self._condition.wait(timeout=datetime.timedelta(seconds=seconds))
