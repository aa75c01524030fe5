"""A one-file multipart upload (``protocol.UPLOAD_FIELD``) with the whole file's ``Repr-Digest``: the
worker's output upload when ``storage.upload_protocol`` is ``multipart``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from converter_client.errors import TransferCut
from converter_client.request_bodies import MultipartFileBody
from converter_client.responses import json_answer
from converter_client.transport import MasterHttp
from converter_common import protocol
from converter_common.digest import repr_digest
from converter_common.ratelimit import TokenBucket


class MultipartUploader:
    """POSTs of a file as the one part of a form; a POST waits ``read_timeout`` for the master's answer."""

    def __init__(self, http: MasterHttp, *, read_timeout: float | None = None, bucket: TokenBucket | None = None):
        self.http = http
        self.read_timeout = read_timeout
        self.bucket = bucket

    def upload(self, route: str, path: Path, digest: bytes, *, what: str, params: dict[str, Any] | None = None,
               on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None) -> int:
        """POST ``path`` to ``route``; returns its size once the master says it stored exactly that many bytes."""
        size = path.stat().st_size
        body = MultipartFileBody(path, protocol.UPLOAD_FIELD, path.name, on_read=on_read, cancel=cancel,
                                 bucket=self.bucket)
        try:
            response = self.http.send("POST", route, params=params, data=body, read_timeout=self.read_timeout,
                                      headers={"Content-Type": body.content_type, "Repr-Digest": repr_digest(digest)})
        finally:
            body.close()
        stored = json_answer(response).get("size")
        if stored != size:
            raise TransferCut(f"{what}: master stored {stored} bytes, sent {size}")
        return size
