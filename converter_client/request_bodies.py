"""Streamed request bodies read from disk in large blocks: a byte range of a file, or a one-file multipart form.

requests sends any object with ``read`` and ``__len__`` as a streamed body with a Content-Length.
For multipart, requests-toolbelt's ``MultipartEncoder`` does the same job, but measured 0.8-1.4 GB/s
against 3.3 GB/s for this reader on the target machine (shared/notes/xfer.md); plain ``files=``
holds the whole file in memory.

Used by the worker (output uploads, tus and multipart) and converterctl (source uploads, tus).
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from converter_common.ratelimit import TokenBucket
from converter_client.errors import Cancelled

DEFAULT_BLOCK = 1 << 20
# Blocks that may wait for the hashing thread: sending and hashing run at about the same speed, and a few
# blocks of slack keep one from stopping whenever the other has a slow moment (a block is a 1 MiB ``bytes``).
HASH_AHEAD = 4


class FileRangeBody:
    """Bytes ``[offset, offset + length)`` of a file, with a progress callback and a cancel flag.

    ``hasher`` is fed every block, in a helper thread while the block is being sent (hashlib releases
    the GIL), up to ``HASH_AHEAD`` blocks behind, so hashing does not hold up the upload; it has seen every
    block read once ``close()`` returns.
    """

    def __init__(self, path: Path, offset: int, length: int, *, on_read: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None, bucket: TokenBucket | None = None, hasher=None):
        self._path = path
        self._offset = offset
        self._remaining = length
        self._length = length
        self._file = None
        self._on_read = on_read
        self._cancel = cancel
        self._bucket = bucket  # upload bandwidth limit: each block waits for its tokens before it is sent
        self._hasher = hasher  # fed every block read (so: hashed while sent, not in a pass of its own)
        self._hash_thread: ThreadPoolExecutor | None = None
        self._hashing: deque[Future] = deque()  # blocks read and not yet hashed; one thread keeps the order

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("upload cancelled")
        if self._remaining <= 0:
            self.close()
            return b""
        if self._file is None:
            self._file = open(self._path, "rb", buffering=0)
            self._file.seek(self._offset)
        data = self._file.read(min(size if size and size > 0 else DEFAULT_BLOCK, self._remaining))
        if not data:
            raise OSError(f"{self._path.name} shrank while it was being uploaded")
        self._remaining -= len(data)
        if self._hasher is not None:
            self._hash_in_background(data)
        if self._on_read is not None:
            self._on_read(len(data))
        if self._bucket is not None:
            self._bucket.consume(len(data))
        return data

    def close(self) -> None:
        self._wait_for_hash()
        if self._hash_thread is not None:
            self._hash_thread.shutdown()
            self._hash_thread = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _hash_in_background(self, data: bytes) -> None:
        if len(self._hashing) >= HASH_AHEAD:  # hashing is slower than sending: wait for the oldest block
            self._hashing.popleft().result()
        if self._hash_thread is None:
            self._hash_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-hash")
        self._hashing.append(self._hash_thread.submit(self._hasher.update, data))

    def _wait_for_hash(self) -> None:
        while self._hashing:
            self._hashing.popleft().result()


class MultipartFileBody:
    """The body ``--boundary / part headers / file bytes / --boundary--`` with one file part."""

    def __init__(self, path: Path, field: str, filename: str, content_type: str = "application/octet-stream",
                 *, on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None,
                 bucket: TokenBucket | None = None):
        self.boundary = uuid.uuid4().hex
        self._pieces = [
            (f"--{self.boundary}\r\n"
             f'Content-Disposition: form-data; name="{field}"; filename="{_quote(filename)}"\r\n'
             f"Content-Type: {content_type}\r\n\r\n").encode(),
            FileRangeBody(path, 0, path.stat().st_size, on_read=on_read, cancel=cancel, bucket=bucket),
            f"\r\n--{self.boundary}--\r\n".encode(),
        ]
        self._length = sum(len(piece) for piece in self._pieces)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        while self._pieces:
            piece = self._pieces[0]
            if isinstance(piece, bytes):
                self._pieces.pop(0)
                return piece
            data = piece.read(size)
            if data:
                return data
            self._pieces.pop(0)
        return b""

    def close(self) -> None:
        for piece in self._pieces:
            if isinstance(piece, FileRangeBody):
                piece.close()


def _quote(filename: str) -> str:
    return filename.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")
