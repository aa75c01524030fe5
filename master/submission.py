"""Creating jobs: the rules every way of submitting shares (JSON API, source upload, watch folder)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

import tornado.ioloop

from converter_common.digest import file_sha256
from converter_common.profiles import BUILTIN_PROFILES
from master import errors
from master.config import MasterConfig
from master.paths import check_output_parent, resolve_in_root, storage_relative
from master.store import Job, JobStore, OutputBusy

CONVERTED_DIR = "converted"
INCOMING_DIR = "incoming"  # where uploaded sources are kept, under names the server chooses
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def check_output(output: Path, source: Path | None, profile: str) -> None:
    """Not the source, not a directory, not there yet, an extension the profile allows."""
    if source is not None and output == source:
        raise errors.bad_request("invalid_path", "output_path must differ from source_path")
    check_output_parent(output)
    if output.is_dir():
        raise errors.bad_request("invalid_path", "output_path is a directory")
    if output.exists():
        raise errors.conflict("output_exists", "output_path already exists; remove it or choose another path")
    containers = BUILTIN_PROFILES[profile].containers
    extension = PurePosixPath(output.name).suffix.lstrip(".").lower()
    if extension not in containers:
        raise errors.bad_request("invalid_path", f"output_path must end in .{' or .'.join(containers)} for {profile}")


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
    """SHA-256 of a source, computed off the IOLoop; downloads send it as Repr-Digest and ETag."""
    return await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, source)


def insert_job(store: JobStore, config: MasterConfig, *, job_id: str, source: Path, outputs: list[Path],
               profile: str, sha256: bytes) -> Job:
    """The job, writing to the first of ``outputs`` that is free (not on disk, no active job writing it)."""
    root = config.storage.root
    stat = source.stat()
    free = [output for output in outputs if not output.exists()] or outputs[-1:]
    for index, output in enumerate(free):
        check_output(output, source, profile)
        try:
            return store.create_job(
                job_id=job_id, source_path=storage_relative(root, source), output_path=storage_relative(root, output),
                profile=profile, source_size=stat.st_size, source_sha256=sha256.hex(),
                source_mtime_ns=stat.st_mtime_ns, max_attempts=config.jobs.max_attempts)
        except OutputBusy:
            if index == len(free) - 1:
                raise
    raise AssertionError("unreachable")
