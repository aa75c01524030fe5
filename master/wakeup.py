"""Wakes long-polling workers the moment a job becomes claimable: on this master (``WakeUpSignal``), and, with
PostgreSQL, when another master made one claimable (``JobNotices``)."""

from __future__ import annotations

import datetime
import logging
import threading
import time

import tornado.ioloop
import tornado.locks

log = logging.getLogger("converter.master")


class WakeUpSignal:
    """A condition on the IOLoop: claim handlers wait on it, anything that makes a job pending sends it."""

    def __init__(self) -> None:
        self._condition = tornado.locks.Condition()

    def send(self) -> None:
        self._condition.notify_all()

    async def wait(self, seconds: float) -> None:
        await self._condition.wait(timeout=datetime.timedelta(seconds=seconds))


class JobNotices:
    """With PostgreSQL: hears other masters' new and requeued jobs (``LISTEN``) and wakes this master's claimers.

    Every statement that makes a job claimable also sends ``NOTIFY converter_jobs, '<job id>'`` (ids only,
    never payloads) when it commits. One dedicated connection per master listens, in a thread; a notice sends
    ``wakeup`` on the IOLoop. NOTIFY is best effort: a lost notice (the connection was down) costs a claimer at
    most ``claim.RECHECK_SECONDS``, since claimers look again that often anyway. When the connection drops it is
    re-made with back-off (logged once when lost, once when back), and the claimers are woken as soon as it
    listens again, since notices sent meanwhile were missed.
    """

    def __init__(self, url: str, wakeup: WakeUpSignal, on_notice=lambda: None, on_reconnect=lambda: None) -> None:
        self.url = url
        self.wakeup = wakeup
        self.on_notice = on_notice
        self.on_reconnect = on_reconnect
        self._loop = tornado.ioloop.IOLoop.current()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen_forever, name="job-notices", daemon=True)
        self._lost_at: float | None = None
        self._delay = FIRST_DELAY

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _listen_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - the database away or restarting: listen again later
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                    self._delay = FIRST_DELAY
                    log.warning("job notices: %s; listening again with back-off (up to %.0f s)",
                                " ".join(str(exc).split()), MAX_DELAY)
                self._stopping.wait(self._delay)
                self._delay = min(self._delay * 2, MAX_DELAY)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self._listening()
            while not self._stopping.is_set():
                for _notice in connection.notifies(timeout=1.0, stop_after=64):
                    self._loop.add_callback(self._heard)

    def _listening(self) -> None:
        if self._lost_at is None:
            return
        log.warning("job notices: listening again after %.1f s", time.monotonic() - self._lost_at)
        self._lost_at = None
        self.on_reconnect()
        self._loop.add_callback(self.wakeup.send)  # notices sent while it was away were missed: look again

    def _heard(self) -> None:
        self.on_notice()
        self.wakeup.send()


CHANNEL = "converter_jobs"
FIRST_DELAY = 0.5
MAX_DELAY = 5.0
