"""The watch folder: complete files dropped into an inbox become jobs, once.

A file is complete when its size and mtime have not changed for ``watch.stable_seconds``. It is
then moved (a rename, same filesystem) to ``watch.accepted_dir`` and a job is created for it with
an id derived from its new path. Moving it out of the inbox means it is never picked up twice; the
derived id means a restart in between (moved, no job yet) only creates the missing job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path, PurePosixPath

import tornado.ioloop

from master.errors import ApiError
from master.database import DatabaseUnavailable
from master.object_store import ObjectStoreError
from master.intake import default_outputs
from master.paths import storage_relative
from master.store import DuplicateJob, StoreError

log = logging.getLogger("converter.master")


class PeriodicScan:
    """Runs ``scan()`` every ``watch.interval`` on the IOLoop, never two at once; a failed scan is logged."""

    def __init__(self, services) -> None:
        self.services = services
        self.config = services.config
        self._busy = False
        self._timer: tornado.ioloop.PeriodicCallback | None = None
        self._interrupted = False  # a round stopped by the database being away: files may wait in accepted/

    def start(self) -> None:
        self._timer = tornado.ioloop.PeriodicCallback(self._tick, self.config.watch.interval * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    async def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        first_miss = self.services.store.available  # the database logs its outage; one line here is enough
        try:
            await self.scan()
        except (OSError, ObjectStoreError) as exc:
            log.warning("watch folder: cannot look at the inbox: %s", exc)
        except DatabaseUnavailable as exc:
            (log.warning if first_miss else log.debug)("watch folder: round skipped: %s", exc)
            self._interrupted = True
        finally:
            self._busy = False

    async def scan(self, now: float | None = None) -> None:
        raise NotImplementedError


class InboxWatcher(PeriodicScan):
    def __init__(self, services) -> None:
        super().__init__(services)
        watch = self.config.watch
        self.root = self.config.storage.root
        self.inbox = self.root / watch.inbox
        self.accepted = self.root / watch.accepted_dir
        self._pending: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, unchanged since)

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.accepted.mkdir(parents=True, exist_ok=True)
        tornado.ioloop.IOLoop.current().spawn_callback(self.recover)
        super().start()

    async def recover(self) -> None:
        """Create the jobs of files that were moved aside but whose job a crash kept from being created."""
        for path in sorted(self.accepted.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                await self._submit(path, quiet_if_known=True)

    async def scan(self, now: float | None = None) -> None:
        if self._interrupted:
            await self.recover()
            self._interrupted = False
        now = time.monotonic() if now is None else now
        present = set()
        for entry in os.scandir(self.inbox):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            present.add(entry.name)
            stat = entry.stat(follow_symlinks=False)
            seen = self._pending.get(entry.name)
            if seen is None or seen[:2] != (stat.st_size, stat.st_mtime_ns):
                self._pending[entry.name] = (stat.st_size, stat.st_mtime_ns, now)
            elif now - seen[2] >= self.config.watch.stable_seconds:
                del self._pending[entry.name]
                await self._accept(Path(entry.path))
        for gone in set(self._pending) - present:
            del self._pending[gone]

    async def _accept(self, path: Path) -> None:
        target = self.accepted / path.name
        counter = 1
        while target.exists():
            target = self.accepted / f"{path.stem}-{counter}{path.suffix}"
            counter += 1
        os.rename(path, target)
        await self._submit(target, quiet_if_known=False)

    async def _submit(self, source: Path, *, quiet_if_known: bool) -> None:
        relative = storage_relative(self.root, source)
        job_id = "watch-" + hashlib.sha256(relative.encode()).hexdigest()[:16]
        profile = self.config.watch.profile
        try:
            job = await self.services.intake.from_stored_file(
                job_id=job_id, source=relative,
                outputs=default_outputs(self.services.storage, source.name, self.config.profiles[profile], job_id),
                profile=profile)
        except DuplicateJob:
            if not quiet_if_known:
                log.warning("watch folder: %s already has job %s", relative, job_id)
            return
        except (ApiError, StoreError, OSError) as exc:
            log.error("watch folder: no job for %s: %s", relative, exc)
            return
        log.info("watch folder: %s became job %s -> %s", relative, job.id, job.output_path)


class BucketInboxWatcher(PeriodicScan):
    """``watch.inbox`` with the bucket backend: a key prefix in the bucket.

    An object under it whose size and ETag have not changed for ``watch.stable_seconds`` becomes a job, once per
    version: the job id is derived from its key and ETag, so a rescan, a restart or a second master finds the
    job already there. The object stays where it is (a bucket has no cheap rename; ``watch.accepted_dir`` is
    not used); a new version under the same key is a new job.
    """

    def __init__(self, services) -> None:
        super().__init__(services)
        self.storage = services.storage
        self.inbox = self.config.watch.inbox.strip("/") + "/"
        self._pending: dict[str, tuple[int, str, float]] = {}  # relative key → (size, etag, unchanged since)

    async def scan(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        present = set()
        for stored in await self.storage.list(self.inbox):
            relative = self.storage.relative(stored.key)
            if relative.endswith("/") or PurePosixPath(relative).name.startswith("."):
                continue
            present.add(relative)
            seen = self._pending.get(relative)
            if seen is None or seen[:2] != (stored.size, stored.etag):
                self._pending[relative] = (stored.size, stored.etag, now)
            elif now - seen[2] >= self.config.watch.stable_seconds:
                del self._pending[relative]
                await self._submit(relative, stored.etag)
        for gone in set(self._pending) - present:
            del self._pending[gone]

    async def _submit(self, relative: str, etag: str) -> None:
        job_id = "watch-" + hashlib.sha256(f"{relative}\0{etag}".encode()).hexdigest()[:16]
        if self.services.store.job_exists(job_id):
            return  # this version already became a job
        profile = self.config.watch.profile
        name = PurePosixPath(relative).name
        try:
            job = await self.services.intake.from_stored_file(
                job_id=job_id, source=relative,
                outputs=default_outputs(self.storage, name, self.config.profiles[profile], job_id),
                profile=profile)
        except DuplicateJob:
            return
        except (ApiError, StoreError, ObjectStoreError) as exc:
            log.error("watch folder: no job for %s: %s", relative, exc)
            return
        log.info("watch folder: %s became job %s -> %s", relative, job.id, job.output_path)
