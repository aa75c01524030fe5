"""A multipart/form-data body that streams one file from disk with large reads.

requests-toolbelt's ``MultipartEncoder`` does the same job, but measured 0.8-1.4 GB/s against
3.3 GB/s for this reader on the target machine (shared/notes/xfer.md); plain ``files=`` holds the
whole file in memory. requests sends any object with ``read`` and ``__len__`` as a streamed body
with a ``Content-Length``.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from worker.errors import Shutdown


class MultipartFileBody:
    """The body ``--boundary / headers / file bytes / --boundary--`` read piecewise by the HTTP client."""

    def __init__(self, path: Path, field: str, filename: str, content_type: str = "application/octet-stream",
                 *, on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None):
        self.boundary = uuid.uuid4().hex
        self._preamble = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{_quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._epilogue = f"\r\n--{self.boundary}--\r\n".encode()
        self._path = path
        self._file_size = os.path.getsize(path)
        self._file: BinaryIO | None = None
        self._stage = 0  # 0 preamble, 1 file, 2 epilogue, 3 done
        self._on_read = on_read
        self._cancel = cancel

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._preamble) + self._file_size + len(self._epilogue)

    def read(self, size: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Shutdown("upload cancelled")
        if self._stage == 0:
            self._stage = 1
            self._file = open(self._path, "rb", buffering=0)
            return self._preamble
        if self._stage == 1:
            data = self._file.read(size if size and size > 0 else 1 << 20)
            if data:
                if self._on_read is not None:
                    self._on_read(len(data))
                return data
            self.close()
            self._stage = 2
        if self._stage == 2:
            self._stage = 3
            return self._epilogue
        return b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _quote(filename: str) -> str:
    return filename.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")
