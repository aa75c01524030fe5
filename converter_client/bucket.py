"""Transfers straight to and from an S3-compatible bucket, over URLs the master presigned.

Used when the master's ``storage.backend`` is ``s3`` (its claim carries ``bucket``). The master hands out
URLs and keeps the books (``master/handlers/bucket_transfer.py``); the bytes go between worker and store:

- Download: a presigned GET, resumed with ``Range`` from the bytes on disk, verified against the SHA-256
  the master recorded for the source. The URL is asked for at each attempt, so an expired one is renewed.
- Upload: the output is hashed once (whole file and each part, cut by ``protocol.part_size_for``); the
  master answers presigned PUTs for the parts the store does not hold yet, each signed with its part's
  ``x-amz-checksum-sha256`` (the store refuses other bytes: 400 ``BadDigest``); every refusal, cut or
  expiry ends the attempt, and the next one asks again and sends only what is missing.

No credentials and no master headers go to the store: a presigned URL carries its own signature, and an
``Authorization`` header beside it would be refused.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from converter_client.download import Downloader, PartialDownload
from converter_client.errors import MasterAway, Refused, TransferCut, TransferError, body_start
from converter_client.request_bodies import FileRangeBody
from converter_client.responses import json_answer
from converter_client.transport import CONTROL_TIMEOUT, MasterHttp
from converter_common import protocol
from converter_common.ratelimit import TokenBucket

READ_BLOCK = 1 << 20


class StoreRefused(TransferCut):
    """The object store refused a presigned request (expired URL, corrupted part, access denied): ask the
    master for fresh URLs and try again."""

    def __init__(self, what: str, status: int, detail: str):
        super().__init__(f"{what}: object store answered {status}: {detail}")
        self.status = status


@dataclass(frozen=True)
class OutputDigests:
    """A file's SHA-256 and the SHA-256 of each of its parts, from one read."""

    size: int
    sha256: str
    part_size: int
    parts: tuple[str, ...]

    @classmethod
    def of_file(cls, path: Path, preferred_part_size: int) -> "OutputDigests":
        size = path.stat().st_size
        part_size = protocol.part_size_for(size, preferred_part_size)
        whole, parts = hashlib.sha256(), []
        with open(path, "rb", buffering=0) as file:
            for _ in range(protocol.part_count(size, part_size)):
                part, remaining = hashlib.sha256(), part_size
                while remaining > 0 and (block := file.read(min(READ_BLOCK, remaining))):
                    whole.update(block)
                    part.update(block)
                    remaining -= len(block)
                parts.append(part.hexdigest())
        return cls(size, whole.hexdigest(), part_size, tuple(parts))


def store_session() -> MasterHttp:
    """A session for presigned URLs: absolute URLs, no master headers, failures worded without the signature."""
    http = MasterHttp("")

    def describe(method: str, url: str, exc: requests.RequestException) -> TransferError:
        """As for the master (the store out of reach counts as away: a finished output is kept and retried),
        without the URL's signature in the message."""
        text = f"object store: {method} {url.split('?', 1)[0]}: {exc.__class__.__name__}"
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return MasterAway(text)
        return TransferCut(text)

    http.describe_failure = describe  # type: ignore[method-assign]
    return http


def stored_bytes(digests: OutputDigests, numbers: list[int]) -> int:
    """How many of the file's bytes the parts ``numbers`` hold."""
    return sum(min(digests.part_size, digests.size - (n - 1) * digests.part_size) for n in numbers)


def put_part(store: MasterHttp, path: Path, digests: OutputDigests, part: dict[str, Any], *, what: str,
             on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None,
             bucket: TokenBucket | None = None, read_timeout: float | None = None) -> None:
    """PUT one part of ``path`` to its presigned URL (with the headers that were signed); ``StoreRefused`` if the
    store says no (a corrupted part: 400 BadDigest; an expired URL: 403)."""
    number = int(part["number"])
    offset = (number - 1) * digests.part_size
    body = FileRangeBody(path, offset, min(digests.part_size, digests.size - offset), on_read=on_read,
                         cancel=cancel, bucket=bucket)
    try:
        response = store.send("PUT", part["url"], data=body, headers=part["headers"], read_timeout=read_timeout)
    finally:
        body.close()
    if response.status_code >= 300:
        raise StoreRefused(f"{what}, part {number}", response.status_code, body_start(response))


class BucketTransfers:
    """A worker's transfers with the bucket: control calls to the master over ``master``, bytes to the store
    over a session of its own (no master headers)."""

    def __init__(self, master: MasterHttp, *, chunk_size: int, read_timeout: float | None, direct: bool,
                 download_bucket: TokenBucket | None, upload_bucket: TokenBucket | None) -> None:
        self.master = master
        self.store = store_session()
        self.downloads = Downloader(self.store, chunk_size=chunk_size, read_timeout=read_timeout, direct=direct,
                                    bucket=download_bucket)
        self.read_timeout = read_timeout
        self.upload_bucket = upload_bucket

    # -- download ---------------------------------------------------------------------------------

    def download(self, job_id: str, partial: PartialDownload, *, what: str,
                 progress: Callable[[int | None, int], Callable[[int], None]],
                 cancel: threading.Event | None = None, until: int | None = None) -> int:
        """As ``Downloader.fetch`` (``until``: the source's first bytes only), over a presigned URL asked for now."""
        source = self._ask(protocol.WORKER_SOURCE_URL, job_id, {})
        try:
            return self.downloads.fetch(source["url"], partial, what=what, progress=progress, cancel=cancel,
                                        expected_digest=bytes.fromhex(source["sha256"]), until=until)
        except Refused as exc:  # from the store, not the master: an expired URL, a missing object
            raise StoreRefused(what, exc.status, body_start(exc.response)) from None

    # -- upload -----------------------------------------------------------------------------------

    def upload(self, job_id: str, path: Path, digests: OutputDigests, *, what: str,
               on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None,
               kept_source: str | None = None) -> dict[str, Any]:
        """Send the parts the store lacks, then have the master complete the job; its answer. ``kept_source``: the
        file is the job's source, kept as its output (``discard_larger``), and why: the master checks it is."""
        declared = {"size": digests.size, "sha256": digests.sha256}
        if kept_source is not None:
            declared["kept_source"] = kept_source
        plan = self._ask(protocol.WORKER_OUTPUT_PARTS, job_id, {**declared, "parts": list(digests.parts)})
        if on_read is not None:  # what the store already holds counts as sent
            on_read(stored_bytes(digests, plan["stored"]))
        for part in plan["parts"]:
            self._put_part(path, digests, part, what=what, on_read=on_read, cancel=cancel)
        return self._ask(protocol.WORKER_OUTPUT_COMPLETE, job_id, declared)

    def _put_part(self, path: Path, digests: OutputDigests, part: dict[str, Any], *, what: str,
                  on_read: Callable[[int], None] | None, cancel: threading.Event | None) -> None:
        put_part(self.store, path, digests, part, what=what, on_read=on_read, cancel=cancel,
                 bucket=self.upload_bucket, read_timeout=self.read_timeout)

    def _ask(self, route: str, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.master.send("POST", route, json=body, params={"job_id": job_id},
                                    read_timeout=CONTROL_TIMEOUT)
        return json_answer(response)
