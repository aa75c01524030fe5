"""Resumable, verified downloads: the worker's source download and converterctl's output download.

The body streams into ``download_writer.HashingWriter`` (hashed as it arrives, written by a helper
thread). A cut transfer resumes from the bytes already on disk (``Range`` + ``If-Range`` on the
version's ETag); a 200 instead of a 206 means a whole new copy. The result is checked against the
master's ``Repr-Digest``: a mismatch drops the partial file (``DigestMismatch``).

A fetch may stop early (``until``): it asks for the file's first bytes only (one ranged GET), and the next
fetch continues the same ``PartialDownload`` from there, as a resume does: the worker's skip rule looks at a
source's head this way before it decides to download the rest.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from converter_client.download_writer import HashingWriter
from converter_client.errors import Cancelled, DigestMismatch, Refused, TransferCut
from converter_client.transport import MasterHttp
from converter_common.digest import parse_repr_digest
from converter_common.ratelimit import TokenBucket

READ_BLOCK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class UnexpectedRange(TransferCut):
    """A 206 that does not continue the bytes on disk; ``content_range`` is what the master sent."""

    def __init__(self, message: str, content_range: str | None):
        super().__init__(message)
        self.content_range = content_range


@dataclass
class PartialDownload:
    """What survives between attempts of one download: the bytes on disk, their running hash, the version."""

    path: Path
    offset: int = 0
    etag: str | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    size: int | None = None  # the whole file's, once an answer told it

    @property
    def complete(self) -> bool:
        """Every byte of the file is on disk (and was verified, where a digest came)."""
        return self.size is not None and self.offset == self.size

    @classmethod
    def on_disk(cls, path: Path, etag: str | None) -> "PartialDownload":
        """The bytes an earlier run left in ``path`` (of version ``etag``), hashed again to resume from."""
        partial = cls(path, path.stat().st_size, etag)
        remaining = partial.offset
        with open(path, "rb", buffering=0) as f:
            while remaining > 0 and (block := f.read(min(READ_BLOCK, remaining))):
                partial.hasher.update(block)
                remaining -= len(block)
        return partial

    def restart(self) -> None:
        self.offset, self.etag, self.hasher, self.size = 0, None, hashlib.sha256(), None
        self.path.unlink(missing_ok=True)


class Downloader:
    """GETs of one kind of file from the master, each resumed from a ``PartialDownload``.

    ``chunk_size``: the ``iter_content`` read size; ``direct``: write with ``O_DIRECT`` where allowed;
    ``bucket``: download bandwidth limit, shared with whoever else holds it.
    """

    def __init__(self, http: MasterHttp, *, chunk_size: int = READ_BLOCK, read_timeout: float | None = None,
                 direct: bool = False, bucket: TokenBucket | None = None):
        self.http = http
        self.chunk_size = chunk_size
        self.read_timeout = read_timeout
        self.direct = direct
        self.bucket = bucket

    def fetch(self, path: str, partial: PartialDownload, *, what: str,
              progress: Callable[[int | None, int], Callable[[int], None]],
              params: dict[str, Any] | None = None, cancel: threading.Event | None = None,
              on_version: Callable[[PartialDownload], None] | None = None,
              expected_digest: bytes | None = None, until: int | None = None) -> int:
        """GET ``path`` into ``partial`` to its end; returns the bytes on disk (the file's size, unless ``until``).

        ``progress(total, offset)`` gives the callback that hears of each chunk; ``on_version`` hears of
        the version (``partial.etag``) before the body; ``what`` names the download in errors;
        ``expected_digest``: the SHA-256 to check, when the server sends no ``Repr-Digest`` (an object store);
        ``until``: stop once the file's first ``until`` bytes are on disk (only they are asked for); the file is
        verified when they are all of it. A server that answers 200 to the range sends the whole file: kept.
        """
        headers = {}
        if until is not None and partial.offset < until:
            headers = {"Range": f"bytes={partial.offset}-{until - 1}"}
            if partial.offset and partial.etag:
                headers["If-Range"] = partial.etag
        elif partial.offset and partial.etag:
            headers = {"Range": f"bytes={partial.offset}-", "If-Range": partial.etag}
        with self.http.send("GET", path, params=params, stream=True, headers=headers,
                            read_timeout=self.read_timeout) as response:
            if response.status_code >= 400:
                raise Refused(response)
            if response.status_code == 206 and partial.etag and response.headers.get("ETag") != partial.etag:
                # a server that ignores If-Range (SeaweedFS does) resumed another version: fetch it whole
                partial.restart()
                response.close()
                return self.fetch(path, partial, what=what, progress=progress, params=params, cancel=cancel,
                                  on_version=on_version, expected_digest=expected_digest, until=until)
            total, end = _resume_point(response, partial)
            expected_digest = _digest_header(response) or expected_digest
            partial.etag = response.headers.get("ETag")
            if on_version is not None:
                on_version(partial)
            on_bytes = progress(total, partial.offset)
            writer = HashingWriter(open(partial.path, "ab" if partial.offset else "wb", buffering=0), partial.hasher,
                                   direct=self.direct)
            start, bucket = partial.offset, self.bucket
            try:
                for chunk in response.iter_content(self.chunk_size):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("download cancelled")
                    writer.write(chunk)
                    partial.offset += len(chunk)
                    on_bytes(len(chunk))
                    if bucket is not None:
                        bucket.consume(len(chunk))
            except requests.RequestException as exc:
                raise TransferCut(f"{what} cut at byte {partial.offset}: {exc.__class__.__name__}") from exc
            finally:
                try:
                    writer.close()
                except OSError:
                    partial.restart()  # the hash saw bytes the file did not get: no resuming from here
                    raise
                partial.offset = start + writer.written
        if end is not None and partial.offset != end:
            raise TransferCut(f"{what}: got {partial.offset} of {end} bytes")
        partial.size = total if total is not None else partial.offset  # no length: the body ended with the file
        if not partial.complete:
            return partial.offset  # the ``until`` asked for; the digest waits for the rest
        if expected_digest is not None and partial.hasher.digest() != expected_digest:
            partial.restart()
            raise DigestMismatch(f"{what}: SHA-256 mismatch, downloading again")
        return partial.offset


def _resume_point(response: requests.Response, partial: PartialDownload) -> tuple[int | None, int | None]:
    """Total size of the file and the offset the body ends at (None: unknown); restarts ``partial`` unless the
    master resumed it where it stood."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == partial.offset:
            return int(match.group(3)), int(match.group(2)) + 1
        raise UnexpectedRange("master resumed the download at another offset", response.headers.get("Content-Range"))
    if partial.offset:
        partial.restart()  # a 200: the master sent the whole file (new version, or no Range support)
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    return total, total


def _digest_header(response: requests.Response) -> bytes | None:
    """``Repr-Digest`` of the answer, or of the redirect that led to it (a presigned URL of an object store)."""
    header = response.headers.get("Repr-Digest")
    for earlier in reversed(response.history):
        header = header or earlier.headers.get("Repr-Digest")
    try:
        return parse_repr_digest(header)
    except ValueError as exc:
        raise TransferCut(f"master sent a malformed Repr-Digest ({exc})") from None
