"""An S3-compatible bucket as the master sees it: keys under a prefix, presigned URLs, multipart uploads.

The master never moves an object's bytes in the common case: it hands workers presigned URLs (a GET,
used with Range to resume; one PUT per part of a multipart upload, each carrying the part's SHA-256 so
the store itself refuses a corrupted part with 400 ``BadDigest``) and keeps the bookkeeping: which parts
the store holds (``stored_parts``, asked again after a cut), completing the upload once the whole file's
digest is known, aborting an abandoned one so no orphan parts are left.

Measured against SeaweedFS 4.48 (``weed mini``, the store the tests run): a part PUT whose bytes do not
match its ``x-amz-checksum-sha256`` gets 400 ``BadDigest``; the header is part of the presigned signature,
so a PUT without it gets 403 ``SignatureDoesNotMatch``; ListParts does not report part checksums, so
uploads are created without a checksum algorithm (which would make CompleteMultipartUpload demand them)
and each part's checksum is checked by the store when the part arrives; an expired URL gets 403
``AccessDenied`` "Request has expired".

Requests are signed with SigV4 (``master.sigv4``) and sent with ``http.client``, one kept-alive connection
per thread. Errors are ``ObjectStoreError`` (the store said no: a missing object, access denied, a bad part)
or ``ObjectStoreUnavailable`` (the store could not be reached or failed: worth trying again).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

from converter_common.protocol import MAX_PARTS, MIN_PART_SIZE, part_count, part_size_for
from master.sigv4 import EMPTY_SHA256, Credentials, Signer


_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}
_UNAVAILABLE_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
ATTEMPTS = 3  # a request the store failed (5xx) or that was cut is sent again, after 0.2 s then 0.4 s
TIMEOUT = 60.0  # seconds to connect, and between two reads of an answer
SEND_BLOCK = 1 << 20


class ObjectStoreError(Exception):
    """The store refused or does not have what was asked (``code`` is the S3 error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ObjectStoreUnavailable(ObjectStoreError):
    """The store could not be reached or failed on its side: the same request may work later."""


class ObjectExists(ObjectStoreError):
    """A write that may only create (``If-None-Match: *``) found an object at the key: nothing was replaced."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    session_token: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    presign_expiry: float = 3600.0
    part_size: int = 64 << 20

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= 5 << 30:
            raise ValueError(f"part_size must be 5 MiB..5 GiB, got {self.part_size}")
        if not 1 <= self.presign_expiry <= 7 * 24 * 3600:
            raise ValueError(f"presign_expiry must be 1 s..7 days, got {self.presign_expiry}")

    def __repr__(self) -> str:
        return f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, access_key={self.access_key!r})"


@dataclass(frozen=True)
class StoredObject:
    size: int
    etag: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class StoredKey:
    key: str
    size: int
    modified: float  # Unix time
    etag: str


@dataclass(frozen=True)
class OpenUpload:
    key: str
    upload_id: str
    initiated: float  # Unix time


@dataclass(frozen=True)
class PresignedPart:
    """A PUT of one part: the URL and the headers that must go with it (they are signed)."""

    number: int
    url: str
    headers: dict[str, str]


class FileSlice:
    """Bytes ``[start, start + length)`` of an open file as a stream, so that a part is sent in blocks
    instead of the master holding a whole part in memory."""

    def __init__(self, file, start: int, length: int) -> None:
        self._file, self._start, self._length, self._position = file, start, length, 0

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._position
        size = remaining if size is None or size < 0 else min(size, remaining)
        if size <= 0:
            return b""
        self._file.seek(self._start + self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data

    def rewind(self) -> None:
        self._position = 0

    def sha256(self) -> bytes:
        """The slice's SHA-256 (read once; the slice is then rewound to be sent)."""
        hasher = hashlib.sha256()
        while block := self.read(SEND_BLOCK):
            hasher.update(block)
        self.rewind()
        return hasher.digest()

    def __len__(self) -> int:
        return self._length


class ObjectBody:
    """An object's bytes as they arrive: ``read(n)`` (a cut or a timeout is ``ObjectStoreUnavailable``), ``close()``.
    ``etag`` is the store's ETag: the MD5 of the bytes for an object stored in one PUT (``plain_md5``)."""

    def __init__(self, response: http.client.HTTPResponse, connection: http.client.HTTPConnection) -> None:
        self._response, self._connection = response, connection
        self.etag = (response.getheader("ETag") or "").strip('"')

    @property
    def plain_md5(self) -> str | None:
        return self.etag.lower() if len(self.etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in self.etag) \
            else None

    def read(self, size: int) -> bytes:
        try:
            return self._response.read(size)
        except (OSError, http.client.HTTPException) as exc:
            raise ObjectStoreUnavailable(type(exc).__name__, f"reading the object was cut: {exc}") from None

    def close(self) -> None:
        self._response.close()
        self._connection.close()


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def xml(self) -> ElementTree.Element:
        return _strip_namespaces(ElementTree.fromstring(self.body))


class ObjectStore:
    """One bucket (and key prefix) of an S3-compatible store."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._signer = Signer(settings.endpoint, settings.region,
                              Credentials(settings.access_key, settings.secret_key, settings.session_token))
        self._connections = threading.local()

    def key(self, relative: str) -> str:
        """The key of a storage-relative path: the same rules as for files (no ``..``, not absolute, no
        control characters, '/' between folders), under the configured prefix."""
        if not isinstance(relative, str) or not relative.strip():
            raise ValueError("the path must be a non-empty relative path")
        if any(ch in _CONTROL for ch in relative) or "\\" in relative:
            raise ValueError("the path contains a control character or a backslash")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or relative.startswith("~"):
            raise ValueError("the path must be relative and must not contain '..'")
        return self.settings.prefix.strip("/") + "/" + str(pure) if self.settings.prefix.strip("/") else str(pure)

    # -- reading ----------------------------------------------------------------------------------

    def head(self, key: str) -> StoredObject:
        answer = self._request("HEAD", key)
        metadata = {name[len("x-amz-meta-"):].lower(): value for name, value in answer.headers.items()
                    if name.lower().startswith("x-amz-meta-")}
        return StoredObject(size=int(answer.headers.get("Content-Length", 0)), etag=answer.headers.get("ETag", ""),
                            metadata=metadata)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectStoreError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def presigned_get(self, key: str, filename: str | None = None) -> str:
        """A URL anyone holding it may GET (with Range) until ``presign_expiry`` passes."""
        query = {}
        if filename:
            query["response-content-disposition"] = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        return self._presign("GET", key, query)

    def read(self, key: str, first: int | None = None, last: int | None = None) -> ObjectBody:
        """The object's body, whole or bytes ``first..last``."""
        headers = {} if first is None else {"Range": f"bytes={first}-{'' if last is None else last}"}
        for attempt in range(ATTEMPTS):
            connection = self._new_connection()
            try:
                connection.request("GET", self._signer.url(self._path(key)),
                                   headers=self._signer.headers("GET", self._path(key), {}, headers))
                response = connection.getresponse()
                if response.status < 300:
                    return ObjectBody(response, connection)
                answer = _Answer(response.status, response.headers, response.read())
                connection.close()
                _raise_for(answer, "GET")
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                error = ObjectStoreUnavailable(type(exc).__name__, str(exc))
            except ObjectStoreUnavailable as exc:
                error = exc
            _pause(attempt)
        raise error

    def list_keys(self, prefix: str) -> list[StoredKey]:
        """Every object whose key starts with ``prefix`` (paged), with its size and last change."""
        keys: list[StoredKey] = []
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            page = self._request("GET", None, query).xml()
            keys += [StoredKey(item.findtext("Key", ""), int(item.findtext("Size", "0")),
                               _timestamp(item.findtext("LastModified", "")), item.findtext("ETag", ""))
                     for item in page.iter("Contents")]
            if page.findtext("IsTruncated") != "true":
                return keys
            token = page.findtext("NextContinuationToken")

    def delete(self, key: str) -> None:
        self._request("DELETE", key)

    # -- writing a file the master holds (a body relayed through it) -------------------------------

    def put_file(self, key: str, path: str, metadata: dict[str, str], on_bytes=None) -> int:
        """Store the file at ``path`` under ``key`` only if no object is there (else ``ObjectExists``), as a
        multipart upload of ``part_size`` parts, each checked by the store against its SHA-256; a failure
        aborts the upload. Returns the bytes sent."""
        size = os.path.getsize(path)
        part_size = part_size_for(size, self.settings.part_size)
        upload_id = self.start_upload(key, metadata)
        try:
            parts = []
            with open(path, "rb") as file:
                for number in range(1, part_count(size, part_size) + 1):
                    start = (number - 1) * part_size
                    part = FileSlice(file, start, min(part_size, size - start))
                    parts.append(self._put_part(key, upload_id, number, part))
                    if on_bytes is not None:
                        on_bytes(len(part))
            self.complete(key, upload_id, parts)
        except BaseException:
            self.abort(key, upload_id)
            raise
        return size

    def _put_part(self, key: str, upload_id: str, number: int, part: FileSlice) -> StoredPart:
        digest = part.sha256()
        answer = self._request("PUT", key, {"partNumber": str(number), "uploadId": upload_id},
                               {"x-amz-checksum-sha256": base64.b64encode(digest).decode("ascii"),
                                "Content-Length": str(len(part))}, part, digest.hex())
        return StoredPart(number, len(part), answer.headers.get("ETag", ""))

    # -- multipart upload ------------------------------------------------------------------------

    def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Create a multipart upload of ``key``; its upload id."""
        headers = {f"x-amz-meta-{name}": value for name, value in (metadata or {}).items()}
        return self._request("POST", key, {"uploads": ""}, headers).xml().findtext("UploadId", "")

    def presigned_part(self, key: str, upload_id: str, number: int, sha256: bytes) -> PresignedPart:
        """A PUT for part ``number`` whose bytes must have ``sha256``: the store refuses other bytes."""
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number must be 1..{MAX_PARTS}")
        headers = {"x-amz-checksum-sha256": base64.b64encode(sha256).decode("ascii")}
        url = self._presign("PUT", key, {"partNumber": str(number), "uploadId": upload_id}, headers)
        return PresignedPart(number=number, url=url, headers=headers)

    def stored_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts the store holds, in order (what a worker need not send again after a cut)."""
        parts: list[StoredPart] = []
        marker = "0"
        while True:
            page = self._request("GET", key, {"uploadId": upload_id, "part-number-marker": marker}).xml()
            parts += [StoredPart(number=int(part.findtext("PartNumber", "0")), size=int(part.findtext("Size", "0")),
                                 etag=part.findtext("ETag", "")) for part in page.iter("Part")]
            if page.findtext("IsTruncated") != "true":
                return parts
            marker = page.findtext("NextPartNumberMarker", "")

    def complete(self, key: str, upload_id: str, parts: list[StoredPart]) -> None:
        """Join the parts into the object at ``key``, only if no object is there: ``ObjectExists`` otherwise
        (the upload is then still open; abort it)."""
        listing = "".join(f"<Part><PartNumber>{part.number}</PartNumber><ETag>{escape(part.etag)}</ETag></Part>"
                          for part in parts)
        body = f'<CompleteMultipartUpload xmlns="{_S3_XMLNS}">{listing}</CompleteMultipartUpload>'.encode()
        try:
            answer = self._request("POST", key, {"uploadId": upload_id},
                                   {"If-None-Match": "*", "Content-Type": "application/xml"}, body,
                                   hashlib.sha256(body).hexdigest())
        except ObjectStoreError as exc:
            if exc.code in ("PreconditionFailed", "412"):
                raise ObjectExists(exc.code, f"an object exists at {key!r}; it was not replaced") from None
            raise
        _raise_for(answer, "POST")  # S3 may answer 200 and put the error in the body

    def abort(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; one already gone is fine."""
        try:
            self._request("DELETE", key, {"uploadId": upload_id})
        except ObjectStoreError as exc:
            if exc.code != "NoSuchUpload":
                raise

    def open_uploads(self) -> list[OpenUpload]:
        """Every multipart upload under the prefix not yet completed or aborted (paged)."""
        uploads: list[OpenUpload] = []
        markers: dict[str, str] = {}
        while True:
            query = {"uploads": "", "prefix": self.settings.prefix.strip("/"), **markers}
            page = self._request("GET", None, query).xml()
            uploads += [OpenUpload(upload.findtext("Key", ""), upload.findtext("UploadId", ""),
                                   _timestamp(upload.findtext("Initiated", ""))) for upload in page.iter("Upload")]
            if page.findtext("IsTruncated") != "true":
                return uploads
            markers = {"key-marker": page.findtext("NextKeyMarker", ""),
                       "upload-id-marker": page.findtext("NextUploadIdMarker", "")}

    # -- internals --------------------------------------------------------------------------------

    def _path(self, key: str | None) -> str:
        return f"/{self.settings.bucket}" + (f"/{key}" if key is not None else "")

    def _presign(self, method: str, key: str, query: dict[str, str], headers: dict[str, str] | None = None) -> str:
        return self._signer.presign(method, self._path(key), query, headers, int(self.settings.presign_expiry))

    def _request(self, method: str, key: str | None, query: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, body: bytes | FileSlice | None = None,
                 payload_sha256: str = EMPTY_SHA256) -> _Answer:
        """Send one signed request (again, up to ``ATTEMPTS`` times, when the store failed or the connection was
        cut); its answer, or the store's refusal as an ``ObjectStoreError``."""
        path, query = self._path(key), query or {}
        for attempt in range(ATTEMPTS):
            if isinstance(body, FileSlice):
                body.rewind()
            signed = self._signer.headers(method, path, query, headers or {}, payload_sha256)
            try:
                answer = self._exchange(method, self._signer.url(path, query), signed, body)
                return _raise_for(answer, method)
            except ObjectStoreUnavailable as exc:
                error = exc
            _pause(attempt)
        raise error

    def _exchange(self, method: str, url: str, headers: dict[str, str], body) -> _Answer:
        connection = getattr(self._connections, "connection", None) or self._new_connection()
        self._connections.connection = connection
        try:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            return _Answer(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, a cut answer
            connection.close()
            self._connections.connection = None
            raise ObjectStoreUnavailable(type(exc).__name__, str(exc) or type(exc).__name__) from None

    def _new_connection(self) -> http.client.HTTPConnection:
        endpoint = urlsplit(self.settings.endpoint)
        if endpoint.scheme == "https":
            return http.client.HTTPSConnection(endpoint.netloc, timeout=TIMEOUT, blocksize=SEND_BLOCK)
        return http.client.HTTPConnection(endpoint.netloc, timeout=TIMEOUT, blocksize=SEND_BLOCK)


_S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _raise_for(answer: _Answer, method: str) -> _Answer:
    """``answer`` if it is a success; else the store's error (code and message from its XML body, or the HTTP
    status for a HEAD, whose answer has no body)."""
    code, message = str(answer.status), f"HTTP {answer.status}"
    if answer.body.lstrip().startswith(b"<"):
        try:
            root = answer.xml()
        except ElementTree.ParseError:
            root = None
        if root is not None and root.tag == "Error":
            code, message = root.findtext("Code", code), root.findtext("Message", message)
        elif answer.status < 300:
            return answer
    elif answer.status < 300:
        return answer
    kind = ObjectStoreUnavailable if answer.status >= 500 or code in _UNAVAILABLE_CODES else ObjectStoreError
    raise kind(code, message)


def _pause(attempt: int) -> None:
    if attempt + 1 < ATTEMPTS:
        time.sleep(0.2 * 2 ** attempt)


def _strip_namespaces(root: ElementTree.Element) -> ElementTree.Element:
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return root


def _timestamp(iso: str) -> float:
    """Unix time of an S3 timestamp (``2026-12-03T14:00:00.000Z``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
