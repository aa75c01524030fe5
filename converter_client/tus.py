"""The one tus 1.0.0 client (creation, termination, ``Repr-Digest`` on the last PATCH), for the worker's
output uploads and converterctl's source uploads.

``TusClient`` speaks the protocol: create an upload, ask where it stands (HEAD), send the rest of the
file, delete it. A ``TusUpload`` is what survives between attempts of one upload: its URL on the master
and the running hash of what the master holds. Retrying, and remembering an upload between runs, stay
with the caller (``worker.client``; ``converterctl.transfer`` with ``converterctl.upload_state``).

The rest of the file goes in one PATCH when the whole file's SHA-256 is in the upload's metadata;
otherwise the file is hashed while it is sent and its last ``TUS_TAIL`` bytes go in a PATCH of their
own that carries the whole file's ``Repr-Digest``: the digest is computed while the rest is sent,
instead of in a read of the whole file beforehand.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from converter_client.errors import Refused, TransferCut, UploadConflict, UploadDropped, error_code
from converter_client.request_bodies import FileRangeBody
from converter_client.transport import MasterHttp
from converter_common import protocol
from converter_common.digest import repr_digest
from converter_common.ratelimit import TokenBucket

UPLOAD_BLOCK = 1 << 20
TUS_TAIL = 1 << 20


@dataclass
class TusUpload:
    """A resumable upload across attempts: where it lives on the master once created, and the running hash.

    ``sha256`` is the whole file's digest when it was computed up front (small files, converterctl; it
    then goes in the metadata); otherwise ``hasher`` covers the file's first ``hashed`` bytes as they
    were read for sending.
    """

    path: Path
    size: int
    sha256: bytes | None = None
    location: str | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    hashed: int = 0

    def hash_up_to(self, offset: int) -> None:
        """Make ``hasher`` cover exactly ``[0, offset)``, the part the master holds, reading what it lacks."""
        if self.hashed == offset:
            return
        if self.hashed > offset:  # the master kept less than it had acknowledged: hash from the start
            self.hasher, self.hashed = hashlib.sha256(), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.hashed)
            while self.hashed < offset and (block := f.read(min(UPLOAD_BLOCK, offset - self.hashed))):
                self.hasher.update(block)
                self.hashed += len(block)

    def start_over(self) -> None:
        """The master dropped the upload: the next attempt creates a new one and hashes from the start."""
        self.location = None
        self.hasher, self.hashed = hashlib.sha256(), 0


@dataclass(frozen=True)
class TusState:
    """What the master says of an upload: its URL, how many bytes it holds, ``Upload-Expires`` if sent."""

    location: str
    offset: int
    expires: str | None = None


def encode_metadata(items: Mapping[str, bytes | str | None]) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs; empty values are left out."""
    return ",".join(f"{key} {base64.b64encode(value.encode() if isinstance(value, str) else value).decode()}"
                    for key, value in items.items() if value)


class TusClient:
    """tus against the master's ``protocol.UPLOADS``; a PATCH waits ``read_timeout`` for the master's answer.

    Errors: ``Refused`` for an error answer (``UploadConflict``: HEAD and resume; ``UploadDropped``:
    start a new upload), ``TransferCut`` when the master holds another offset than the one sent to,
    and whatever ``http.send`` raises for no answer.
    """

    def __init__(self, http: MasterHttp, *, read_timeout: float | None = None, bucket: TokenBucket | None = None):
        self.http = http
        self.read_timeout = read_timeout
        self.bucket = bucket  # upload bandwidth limit, shared with whoever else holds it

    # -- the protocol's requests ------------------------------------------------------------------

    def create(self, size: int, metadata: Mapping[str, bytes | str | None]) -> TusState:
        response = self.http.send("POST", protocol.UPLOADS, headers={
            **protocol.TUS_HEADERS, "Upload-Length": str(size), "Upload-Metadata": encode_metadata(metadata)})
        _raise_for_error(response)
        return TusState(response.headers["Location"], 0, response.headers.get("Upload-Expires"))

    def state(self, location: str) -> TusState | None:
        """Where the master's copy of the upload ends; None when the master no longer has it."""
        response = self.http.send("HEAD", location, headers=protocol.TUS_HEADERS)
        if response.status_code in protocol.UPLOAD_GONE_STATUSES:
            return None
        _raise_for_error(response)
        return TusState(location, int(response.headers["Upload-Offset"]), response.headers.get("Upload-Expires"))

    def terminate(self, location: str) -> None:
        _raise_for_error(self.http.send("DELETE", location, headers=protocol.TUS_HEADERS))

    # -- sending a file ---------------------------------------------------------------------------

    def resume_or_create(self, upload: TusUpload, metadata: Mapping[str, bytes | str | None]) -> int:
        """The offset to send from: the master's for a known upload it still has, else 0 of a new one."""
        state = self.state(upload.location) if upload.location else None
        if state is None:
            upload.location = self.create(upload.size, metadata).location
            return 0
        return state.offset

    def send(self, upload: TusUpload, offset: int, *, what: str, on_read: Callable[[int], None] | None = None,
             cancel: threading.Event | None = None) -> None:
        """Send the file from ``offset`` (the master's) to its end; ``what`` names the upload in errors."""
        if upload.sha256 is not None:  # digest in the metadata: one PATCH for the rest
            self.patch(upload, offset, upload.size, what=what, on_read=on_read, cancel=cancel)
            return
        upload.hash_up_to(offset)
        tail = max(offset, upload.size - TUS_TAIL)
        if offset < tail:
            hasher = upload.hasher.copy()  # upload.hasher keeps matching upload.hashed if this PATCH is cut
            self.patch(upload, offset, tail, what=what, on_read=on_read, cancel=cancel, hasher=hasher)
            upload.hasher, upload.hashed = hasher, tail
        with open(upload.path, "rb", buffering=0) as f:
            f.seek(tail)
            rest = f.read(upload.size - tail)
        digest = upload.hasher.copy()
        digest.update(rest)
        self.patch(upload, tail, upload.size, what=what, on_read=on_read, data=rest, digest=digest.digest())

    def patch(self, upload: TusUpload, offset: int, end: int, *, what: str,
              on_read: Callable[[int], None] | None = None, cancel: threading.Event | None = None,
              hasher=None, data: bytes | None = None, digest: bytes | None = None) -> int:
        """PATCH bytes ``[offset, end)`` of the file (or ``data``); returns the master's new offset, == ``end``."""
        headers = {**protocol.TUS_HEADERS, "Upload-Offset": str(offset), "Content-Type": protocol.TUS_CONTENT_TYPE}
        if digest is not None:
            headers["Repr-Digest"] = repr_digest(digest)
        body: bytes | FileRangeBody
        if data is not None:
            if self.bucket is not None:
                self.bucket.consume(len(data))
            body, read_after = data, len(data)
        else:
            body, read_after = FileRangeBody(upload.path, offset, end - offset, on_read=on_read, cancel=cancel,
                                             bucket=self.bucket, hasher=hasher), 0
        try:
            response = self.http.send("PATCH", upload.location, data=body, headers=headers,
                                      read_timeout=self.read_timeout)
        finally:
            if isinstance(body, FileRangeBody):
                body.close()
        if response.status_code >= 400:
            code = error_code(response)
            if response.status_code == 400 and code == protocol.DIGEST_MISMATCH:
                upload.start_over()  # the master dropped the upload: start a new one
                raise UploadDropped(response, f"{what}: the master computed another SHA-256")
            if response.status_code == 409 and code in protocol.TUS_RESUME_CODES:
                raise UploadConflict(response, f"{what}: master answered 409 {code}; "
                                                "asking it for the offset again")  # the next attempt HEADs the upload
            raise Refused(response)
        stored = int(response.headers.get("Upload-Offset", "-1"))
        if stored != end:
            raise TransferCut(f"{what}: master holds {stored} of {end} bytes")
        if read_after and on_read is not None:
            on_read(read_after)
        return stored


def _raise_for_error(response) -> None:
    if response.status_code >= 400:
        raise Refused(response)
