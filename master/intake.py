"""The one way a job comes to exist, whoever asks: JSON or multipart POST /api/jobs, a completed tus
source upload, the watch folder.

A received source is fsynced and placed, never over anything, at ``incoming/<token>.<ext>`` (a name the
server chooses; the client's file name only gives the default output ``converted/<stem>.<container>``,
or ``converted/<stem>-<job id>.<container>`` when that one is taken). The output is checked once, right
before the insert; then the job is counted and waiting workers are woken.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from pathlib import Path, PurePosixPath

import tornado.ioloop

from converter_common import protocol
from converter_common.digest import file_sha256
from converter_common.profiles import Profile
from master import errors
from master.config import MasterConfig
from master.metrics import MasterMetrics
from master.object_store import ObjectStoreError
from master.storage import SourceFacts, Storage
from master.store import Job, JobStore, OutputBusy
from master.wakeup import WakeUpSignal

CONVERTED_DIR = "converted"
INCOMING_DIR = "incoming"  # where uploaded sources are kept, under names the server chooses
NO_OUTPUT = ""  # the output_path of a job whose profile writes nothing (health-check)
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
_PRIORITY_TEXT = re.compile(r"^[+-]?[0-9]{1,5}$")


class JobIntake:
    def __init__(self, config: MasterConfig, store: JobStore, metrics: MasterMetrics, wakeup: WakeUpSignal,
                 storage: Storage) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.wakeup = wakeup
        self.storage = storage
        self.root = config.storage.root

    def profile(self, name: object) -> str:
        if not isinstance(name, str) or name not in self.config.profiles:
            raise errors.UNKNOWN_PROFILE.error(f"profile must be one of: {', '.join(self.config.profiles)}")
        return name

    def incoming_dir(self) -> Path:
        """Where a received source is written while it arrives (with the local backend, also where it stays)."""
        incoming = self.root / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming

    def outputs_for(self, output_path: str | None, client_name: str, profile: str, job_id: str) -> list[str]:
        """The output asked for, or the default candidates made from the client's file name."""
        if output_path:
            return [self.storage.path(output_path, "output_path")]
        return default_outputs(self.storage, client_name, self.config.profiles[profile], job_id)

    async def check_output(self, output: str, source: str | None, profile: str) -> None:
        """Not the source, a name the profile allows, somewhere a file can be made, nothing there yet."""
        check_output_name(output, source, self.config.profiles[profile])
        if output == NO_OUTPUT:
            return  # a health check: nothing will be written
        self.storage.check_output_location(output)
        if await self.storage.exists(output):
            raise errors.OUTPUT_EXISTS.error()

    async def from_stored_file(self, *, job_id: str, source: str, outputs: list[str], profile: str,
                               priority: int | None = None) -> Job:
        """A job for a file already in storage (JSON submission, watch folder): hashed, then inserted."""
        facts = await self.storage.source(source, "source_path")
        for output in outputs:
            check_output_name(output, source, self.config.profiles[profile])
        digest = facts.sha256 or await self.storage.digest(source)
        return await self._insert(job_id=job_id, source=source, facts=SourceFacts(facts.size, facts.mtime_ns, digest),
                                  outputs=outputs, profile=profile, priority=priority)

    async def from_received_file(self, *, job_id: str, received: Path, client_name: str, output_path: str | None,
                                 profile: str, sha256: bytes, upload_id: str | None = None,
                                 priority: int | None = None) -> Job:
        """A job for a file just received (multipart or tus): ``received`` is kept under ``incoming/``; if no
        job can be made of it, it is removed. A tus upload (``upload_id``) is forgotten with the insert."""
        outputs = self.outputs_for(output_path, client_name, profile, job_id)
        for output in outputs:
            check_output_name(output, None, self.config.profiles[profile])
        source = new_source_name(client_name)
        await fsync_path(received)
        try:
            await self.storage.place(received, source, sha256)
        except FileExistsError:  # 64 random bits: not seen in practice, and never over what is there
            received.unlink(missing_ok=True)
            raise errors.OUTPUT_BUSY.error("a source by the same random name arrived at once; send it again")
        except ObjectStoreError as exc:
            received.unlink(missing_ok=True)
            raise errors.from_object_store(exc) from None
        try:
            facts = await self.storage.source(source, "source_path")
            return await self._insert(job_id=job_id, source=source, facts=SourceFacts(facts.size, facts.mtime_ns,
                                                                                       sha256),
                                      outputs=outputs, profile=profile, upload_id=upload_id, priority=priority)
        except BaseException:
            await self.storage.remove(source)
            raise

    async def from_bucket_object(self, *, job_id: str, source: str, client_name: str, output_path: str | None,
                                 profile: str, sha256: bytes, upload_id: str, priority: int | None = None) -> Job:
        """A job for a source a client just sent straight to the bucket (``source``, named by
        ``new_source_name``); if no job can be made of it, the object is removed."""
        try:
            outputs = self.outputs_for(output_path, client_name, profile, job_id)
            for output in outputs:
                check_output_name(output, None, self.config.profiles[profile])
            facts = await self.storage.source(source, "source_path")
            return await self._insert(job_id=job_id, source=source,
                                      facts=SourceFacts(facts.size, facts.mtime_ns, sha256),
                                      outputs=outputs, profile=profile, upload_id=upload_id, priority=priority)
        except BaseException:
            await self.storage.remove(source)
            raise

    async def _insert(self, *, job_id: str, source: str, facts: SourceFacts, outputs: list[str], profile: str,
                      upload_id: str | None = None, priority: int | None = None) -> Job:
        """The job, writing to the first of ``outputs`` that is free (not in storage, no active job writing it);
        without a ``priority`` of its own it takes its profile's."""
        priority = self.config.profiles[profile].priority if priority is None else priority
        free = [output for output in outputs
                if output == NO_OUTPUT or not await self.storage.exists(output)] or outputs[-1:]
        for index, output in enumerate(free):
            await self.check_output(output, source, profile)
            try:
                job = self.store.create_job(
                    job_id=job_id, source_path=source, output_path=output, profile=profile, source_size=facts.size,
                    source_sha256=facts.sha256.hex(), source_mtime_ns=facts.mtime_ns,
                    max_attempts=self.config.jobs.max_attempts, consumed_upload=upload_id, priority=priority)
            except OutputBusy:
                if index == len(free) - 1:
                    raise
                continue
            self.metrics.jobs_submitted.inc()
            self.wakeup.send()
            return job
        raise AssertionError("unreachable")


def check_priority(value: object) -> int | None:
    """A job's priority as a request gives it: absent (None: the profile's), or a JSON integer in range."""
    if value is None:
        return None
    low, high = protocol.PRIORITY_MIN, protocol.PRIORITY_MAX
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.INVALID_PRIORITY.error(f"priority must be an integer {low}..{high}, got {_shown(value)}")
    return value


def priority_from_text(text: str | None) -> int | None:
    """A priority sent as text (a multipart field, tus metadata): empty or absent is None."""
    if not text:
        return None
    if not _PRIORITY_TEXT.fullmatch(text.strip()):
        raise errors.INVALID_PRIORITY.error(f"priority must be an integer {protocol.PRIORITY_MIN}.."
                                            f"{protocol.PRIORITY_MAX}, got {_shown(text)}")
    return check_priority(int(text.strip()))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def new_source_name(client_name: str) -> str:
    """Where a received source is kept: ``incoming/<random>.<the client's extension>``, a name the server chose."""
    return f"{INCOMING_DIR}/{uuid.uuid4().hex[:16]}{source_extension(client_name)}"


def check_output_name(output: str, source: str | None, profile: Profile) -> None:
    """Not the source, an extension the profile allows; none at all for a profile that writes nothing."""
    if profile.check_only:
        if output != NO_OUTPUT:
            raise errors.INVALID_PATH.error(f"{profile.name} writes no output: leave output_path out")
        return
    if source is not None and output == source:
        raise errors.INVALID_PATH.error("output_path must differ from source_path")
    containers = profile.containers
    extension = PurePosixPath(output).suffix.lstrip(".").lower()
    if extension not in containers:
        raise errors.INVALID_PATH.error(f"output_path must end in .{' or .'.join(containers)} for {profile.name}")


def safe_stem(filename: str) -> str:
    """A file name without directories or extension, reduced to letters, digits, ``. _ -`` and spaces."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = PurePosixPath(base).stem if "." in base.lstrip(".") else base
    stem = unicodedata.normalize("NFC", stem)
    return _UNSAFE_NAME.sub("_", stem).strip(" .")[:100]


def source_extension(filename: str) -> str:
    """The extension of a client's file name, if it is a plain one (``.mkv``), else nothing."""
    suffix = PurePosixPath(filename.replace("\\", "/").rsplit("/", 1)[-1]).suffix
    return suffix.lower() if _EXTENSION.match(suffix) else ""


def default_outputs(storage: Storage, name: str, profile: Profile, job_id: str) -> list[str]:
    """``converted/<stem>.<ext>``, and ``converted/<stem>-<job id>.<ext>`` for when that one is taken; none for a
    profile that writes nothing (``NO_OUTPUT``)."""
    if profile.check_only:
        return [NO_OUTPUT]
    container = profile.containers[0]
    stem = safe_stem(name) or job_id
    candidates = [f"{CONVERTED_DIR}/{stem}.{container}", f"{CONVERTED_DIR}/{stem}-{job_id}.{container}"]
    return [storage.path(candidate, "output_path") for candidate in candidates]


async def source_digest(source: Path) -> bytes:
    """SHA-256 of a file, computed off the IOLoop; downloads send it as Repr-Digest and ETag."""
    return await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, source)


async def fsync_path(path: Path) -> None:
    """fsync a file off the IOLoop; a failure (full disk, I/O error) is 507."""
    try:
        await tornado.ioloop.IOLoop.current().run_in_executor(None, _fsync, path)
    except OSError as exc:
        raise errors.cannot_store(exc.strerror) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
