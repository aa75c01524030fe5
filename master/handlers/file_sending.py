"""Serving a file: validators, a single Range, and a paced, back-pressured send.

Both answer with a strong ``ETag`` and ``Repr-Digest`` (RFC 9530) from a SHA-256 the master already
knows, honour one ``Range`` when ``If-Range`` (if sent) still names this version, and stream with
``write`` + awaited ``flush`` per chunk so a slow reader never makes the master buffer the file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path, PurePosixPath
from typing import Awaitable, Callable

import tornado.iostream

from converter_common.digest import repr_digest
from master import errors
from master.errors import ErrorKind
from master.file_headers import RangeNotSatisfiable, attachment_disposition, content_type_for, parse_byte_range
from master.handlers.base import BaseHandler
from master.storage import in_thread


class FileSendingHandler(BaseHandler):
    async def send_file(self, path: Path, *, missing: ErrorKind, what: str,
                        digest_of: Callable[[Path, os.stat_result], Awaitable[bytes]], send_body: bool = True) -> None:
        """Serve ``path``; ``digest_of`` gives its SHA-256 (stored, or recomputed if the file changed)."""
        try:
            file = open(path, "rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise missing.error(f"the {what} is missing") from None
        with file:
            stat = os.fstat(file.fileno())
            digest = await digest_of(path, stat)
            first, length = self._file_headers(path.name, stat.st_size, digest, what)
            file.seek(first)
            if send_body:
                await self._send(file, length)

    async def send_object(self, relative: str, *, digest: bytes, missing: ErrorKind, what: str,
                          send_body: bool = True) -> None:
        """Serve the bucket's object at ``relative`` through the master, as ``send_file`` serves a file (the seed's
        routes: ``curl -O`` does not follow a redirect to a presigned URL)."""
        storage = self.services.storage
        stored = await storage.head(relative)
        if stored is None:
            raise missing.error(f"the {what} is missing")
        first, length = self._file_headers(PurePosixPath(relative).name, stored.size, digest, what)
        if send_body and length > 0:
            body = await storage.call("get", storage.objects.read, storage.key(relative), first, first + length - 1)
            try:
                await self._send(body, length, read=lambda size: in_thread(body.read, size),
                                 on_sent=storage.metrics.object_store_bytes.labels("download").inc)
            finally:
                body.close()

    def _file_headers(self, name: str, size: int, digest: bytes, what: str) -> tuple[int, int]:
        """Validators, type, disposition and the one ``Range`` asked for (206 when it is not the whole file):
        where the body starts and how long it is."""
        etag = f'"sha256-{digest.hex()}"'
        self.set_header("Content-Type", content_type_for(name))
        self.set_header("Content-Disposition", attachment_disposition(name))
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", etag)
        self.set_header("Repr-Digest", repr_digest(digest))
        first, last = self._requested_range(size, etag, what)
        if (first, last) != (0, size - 1):
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.set_header("Content-Length", str(last - first + 1))
        return first, last - first + 1

    def _requested_range(self, size: int, etag: str, what: str) -> tuple[int, int]:
        if_range = self.request.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            return 0, size - 1  # the client's partial copy is of another version: send it all
        try:
            wanted = parse_byte_range(self.request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            raise errors.RANGE_NOT_SATISFIABLE.error(f"the {what} has {size} bytes",
                                                     headers={"Content-Range": f"bytes */{size}"}) from None
        return wanted if wanted is not None else (0, size - 1)

    async def _send(self, file, length: int, read: Callable[[int], Awaitable[bytes]] | None = None,
                    on_sent: Callable[[int], None] | None = None) -> None:
        chunk_size = self.config.server.chunk_size
        bucket = self.services.outbound
        remaining = length
        try:
            while remaining > 0:
                chunk = await read(min(chunk_size, remaining)) if read else file.read(min(chunk_size, remaining))
                if not chunk:
                    break  # the file shrank under us: Tornado closes the connection on the short body
                if bucket is not None:  # server.outbound_limit: wait for the tokens, without blocking the loop
                    delay = bucket.reserve(len(chunk))
                    if delay > 0:
                        await asyncio.sleep(delay)
                self.write(chunk)
                await self.flush()
                remaining -= len(chunk)
                self.services.metrics.bytes_served.inc(len(chunk))
                if on_sent is not None:
                    on_sent(len(chunk))
        except tornado.iostream.StreamClosedError:
            return  # the client went away; nothing to clean up
