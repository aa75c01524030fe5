"""How a job's files reach the worker and go back: over HTTP (transfer) or through a shared mount.

``transfer`` (the default): download the source into the cache, upload the output (tus or multipart); when
the master keeps its files in a bucket (the claim says ``bucket``), straight from and to the bucket over
presigned URLs instead (``converter_client.bucket``).
``shared`` (the seed's migration and rollback path): read the source from ``storage.mount_path`` and
write the output there, beside its final path; the master verifies it and renames it into place.
Both speak the same job protocol (claims, leases, heartbeats), so a fleet may mix them.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from converter_common.digest import file_sha256
from converter_common.shared_storage import shared_temp_path
from worker.client import MasterClient, SourceHead
from worker.config import WorkerConfig
from worker.errors import Cause, FatalError, RetryableError

log = logging.getLogger("converter.worker")
# The skip rule's look at a transferred source: its first bytes, the first part of its download (``SourceHead``):
# a container's header and index (an MP4 with its index at the front, Matroska, WebM). Where they do not tell (an
# MP4 indexed at its end) the download goes on and the rule is judged on the whole source.
SOURCE_HEAD_BYTES = 2 << 20


class StorageMode(Protocol):
    needs_cache: bool

    def source(self, job: dict[str, Any], job_dir: Path, abort, head: SourceHead | None = None) -> Path: ...

    def output(self, job: dict[str, Any], job_dir: Path) -> Path: ...

    def deliver(self, job: dict[str, Any], output: Path, abort) -> int: ...

    def discard(self, job: dict[str, Any]) -> None: ...

    def keep_source(self, job: dict[str, Any], source: Path, reason: str, abort) -> int: ...


class TransferMode:
    needs_cache = True

    def __init__(self, config: WorkerConfig, client: MasterClient):
        self.client = client
        self.upload = client.upload_resumable if config.storage.upload_protocol == "tus" \
            else client.upload_converted_video

    def source(self, job: dict[str, Any], job_dir: Path, abort, head: SourceHead | None = None) -> Path:
        """The source, downloaded into the job's directory. ``head``: judged on the download's first ``head.size``
        bytes, which are all the file holds when it stops the download; a source no larger is judged whole, by
        the caller (``head`` never judged)."""
        source = job_dir / f"source{PurePosixPath(job['source_path']).suffix.lower()}"
        if head is not None and int(job.get("source_size") or 0) <= head.size:
            head = None
        if in_bucket(job):
            self.client.download_from_bucket(job["id"], source, abort, head=head)
        else:
            self.client.download_source_video(job["id"], source, abort, head=head)
        return source

    def output(self, job: dict[str, Any], job_dir: Path) -> Path:
        return job_dir / f"output{PurePosixPath(job['output_path']).suffix.lower()}"

    def deliver(self, job: dict[str, Any], output: Path, abort) -> int:
        if in_bucket(job):
            return self.client.upload_to_bucket(job["id"], output, int(job["bucket"]["part_size"]), abort)
        return self.upload(job["id"], output, abort)

    def discard(self, job: dict[str, Any]) -> None:
        pass  # everything lives in the job's cache dir, which the worker removes

    def keep_source(self, job: dict[str, Any], source: Path, reason: str, abort) -> int:
        """``discard_larger``: the source becomes the output. With a bucket the worker sends the copy it downloaded
        the way an output goes (presigned parts, then output-complete with ``kept_source``; the master checks the
        bytes are the source's, and never writes over an existing object); with local files the master copies the
        source itself (keep-source), nothing is sent."""
        if in_bucket(job):
            return self.client.upload_to_bucket(job["id"], source, int(job["bucket"]["part_size"]), abort,
                                                kept_source=reason)
        self.client.keep_source(job["id"], reason, abort)
        return source.stat().st_size



class SharedMode:
    needs_cache = False

    def __init__(self, config: WorkerConfig, client: MasterClient):
        self.client = client
        self.mount = config.storage.mount_path

    def source(self, job: dict[str, Any], job_dir: Path, abort, head: SourceHead | None = None) -> Path:
        """The source where it lies on the mount (``head`` unused: the whole source is there to probe)."""
        if in_bucket(job):  # a master with a bucket: nothing of it is on the mount; another worker may take it
            raise RetryableError("the master keeps this job in a bucket; a shared-storage worker cannot take it",
                                 cause=Cause.WORKER)
        source = self._inside_mount(job["source_path"])
        if not source.is_file():  # with no mount at all, the host is at fault, not the job
            raise FatalError(f"source {job['source_path']!r} is not on the shared mount {self.mount}",
                             cause=Cause.SOURCE if self.mount.is_dir() else Cause.WORKER)
        return source

    def output(self, job: dict[str, Any], job_dir: Path) -> Path:
        output = self._inside_mount(shared_temp_path(job["id"], job["output_path"]))
        output.parent.mkdir(parents=True, exist_ok=True)
        return output

    def deliver(self, job: dict[str, Any], output: Path, abort) -> int:
        size = output.stat().st_size
        self.client.complete_shared(job["id"], size, file_sha256(output).hex(), abort)
        return size

    def discard(self, job: dict[str, Any]) -> None:
        """Remove a half-written output from the mount after a failed attempt."""
        self._inside_mount(shared_temp_path(job["id"], job["output_path"])).unlink(missing_ok=True)

    def keep_source(self, job: dict[str, Any], source: Path, reason: str, abort) -> int:
        """``discard_larger``: the master copies the source (on its local storage, the mount) to the output."""
        self.client.keep_source(job["id"], reason, abort)
        return source.stat().st_size


    def _inside_mount(self, relative: str) -> Path:
        mount = self.mount.resolve()
        path = (mount / relative).resolve()
        if mount not in path.parents:
            raise FatalError(f"path {relative!r} leaves the shared mount")
        return path


def in_bucket(job: dict[str, Any]) -> bool:
    """The master keeps this job's files in a bucket: move them over the presigned URLs it hands out."""
    return isinstance(job.get("bucket"), dict)


def storage_mode(config: WorkerConfig, client: MasterClient) -> StorageMode:
    return SharedMode(config, client) if config.storage.mode == "shared" else TransferMode(config, client)
