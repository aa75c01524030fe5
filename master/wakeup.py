"""Wakes long-polling workers the moment a job becomes claimable: on this master (``WakeUpSignal``), and, with
PostgreSQL, when another master made one claimable (``JobNotices``)."""

from __future__ import annotations

import datetime
import logging
import threading

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
    most ``claim.RECHECK_SECONDS``, since claimers look again that often anyway. The connection is re-made
    with backoff when it drops.
    """

    def __init__(self, url: str, wakeup: WakeUpSignal, on_notice=lambda: None) -> None:
        self.url = url
        self.wakeup = wakeup
        self.on_notice = on_notice
        self._loop = tornado.ioloop.IOLoop.current()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen_forever, name="job-notices", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _listen_forever(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - the database away or restarting: listen again later
                log.warning("job notices: %s; listening again in %.1f s", " ".join(str(exc).split()), delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            while not self._stopping.is_set():
                for _notice in connection.notifies(timeout=1.0, stop_after=64):
                    self._loop.add_callback(self._heard)

    def _heard(self) -> None:
        self.on_notice()
        self.wakeup.send()


CHANNEL = "converter_jobs"
