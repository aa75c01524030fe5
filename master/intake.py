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

from converter_common.digest import file_sha256
from converter_common.noclobber import place_new
from converter_common.profiles import BUILTIN_PROFILES
from master import errors
from master.config import MasterConfig
from master.metrics import MasterMetrics
from master.paths import check_output_parent, resolve_in_root, storage_relative
from master.store import Job, JobStore, OutputBusy
from master.wakeup import WakeUpSignal

CONVERTED_DIR = "converted"
INCOMING_DIR = "incoming"  # where uploaded sources are kept, under names the server chooses
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class JobIntake:
    def __init__(self, config: MasterConfig, store: JobStore, metrics: MasterMetrics, wakeup: WakeUpSignal) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.wakeup = wakeup
        self.root = config.storage.root

    def profile(self, name: object) -> str:
        if not isinstance(name, str) or name not in self.config.profiles:
            raise errors.UNKNOWN_PROFILE.error(f"profile must be one of: {', '.join(self.config.profiles)}")
        return name

    def incoming_dir(self) -> Path:
        incoming = self.root / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming

    def outputs_for(self, output_path: str | None, client_name: str, profile: str, job_id: str) -> list[Path]:
        """The output asked for, or the default candidates made from the client's file name."""
        if output_path:
            return [resolve_in_root(self.root, output_path, "output_path")]
        return default_outputs(self.root, client_name, profile, job_id)

    async def from_stored_file(self, *, job_id: str, source: Path, outputs: list[Path], profile: str) -> Job:
        """A job for a file already in storage (JSON submission, watch folder): hashed, then inserted."""
        digest = await source_digest(source)
        return self._insert(job_id=job_id, source=source, outputs=outputs, profile=profile, sha256=digest)

    async def from_received_file(self, *, job_id: str, received: Path, client_name: str, output_path: str | None,
                                 profile: str, sha256: bytes, upload_id: str | None = None) -> Job:
        """A job for a file just received (multipart or tus): ``received`` moves under ``incoming/``; if no job
        can be made of it, it is removed. A tus upload (``upload_id``) is forgotten with the insert."""
        outputs = self.outputs_for(output_path, client_name, profile, job_id)
        source = self.incoming_dir() / f"{uuid.uuid4().hex[:16]}{source_extension(client_name)}"
        await fsync_path(received)
        place_new(received, source)
        try:
            return self._insert(job_id=job_id, source=source, outputs=outputs, profile=profile, sha256=sha256,
                                upload_id=upload_id)
        except BaseException:
            source.unlink(missing_ok=True)
            raise

    def _insert(self, *, job_id: str, source: Path, outputs: list[Path], profile: str, sha256: bytes,
                upload_id: str | None = None) -> Job:
        """The job, writing to the first of ``outputs`` that is free (not on disk, no active job writing it)."""
        stat = source.stat()
        free = [output for output in outputs if not output.exists()] or outputs[-1:]
        for index, output in enumerate(free):
            check_output(output, source, profile)
            try:
                job = self.store.create_job(
                    job_id=job_id, source_path=storage_relative(self.root, source),
                    output_path=storage_relative(self.root, output), profile=profile, source_size=stat.st_size,
                    source_sha256=sha256.hex(), source_mtime_ns=stat.st_mtime_ns,
                    max_attempts=self.config.jobs.max_attempts, consumed_upload=upload_id)
            except OutputBusy:
                if index == len(free) - 1:
                    raise
                continue
            self.metrics.jobs_submitted.inc()
            self.wakeup.send()
            return job
        raise AssertionError("unreachable")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def check_output(output: Path, source: Path | None, profile: str) -> None:
    """Not the source, not a directory, not there yet, an extension the profile allows."""
    if source is not None and output == source:
        raise errors.INVALID_PATH.error("output_path must differ from source_path")
    check_output_parent(output)
    if output.is_dir():
        raise errors.INVALID_PATH.error("output_path is a directory")
    if output.exists():
        raise errors.OUTPUT_EXISTS.error()
    containers = BUILTIN_PROFILES[profile].containers
    extension = PurePosixPath(output.name).suffix.lstrip(".").lower()
    if extension not in containers:
        raise errors.INVALID_PATH.error(f"output_path must end in .{' or .'.join(containers)} for {profile}")


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


def default_outputs(root: Path, name: str, profile: str, job_id: str) -> list[Path]:
    """``converted/<stem>.<ext>``, and ``converted/<stem>-<job id>.<ext>`` for when that one is taken."""
    container = BUILTIN_PROFILES[profile].containers[0]
    stem = safe_stem(name) or job_id
    candidates = [f"{CONVERTED_DIR}/{stem}.{container}", f"{CONVERTED_DIR}/{stem}-{job_id}.{container}"]
    return [resolve_in_root(root, candidate, "output_path") for candidate in candidates]


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
