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

Errors are ``ObjectStoreError`` (the store said no: a missing object, access denied, a bad part) or
``ObjectStoreUnavailable`` (the store could not be reached or failed: worth trying again).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote

from converter_common.protocol import MAX_PARTS, MIN_PART_SIZE, part_count, part_size_for


_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}
_UNAVAILABLE_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500"}


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
    access_key: str | None = None  # None: boto3's standard credential chain
    secret_key: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    presign_expiry: float = 3600.0
    part_size: int = 64 << 20

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= 5 << 30:
            raise ValueError(f"part_size must be 5 MiB..5 GiB, got {self.part_size}")
        if not 1 <= self.presign_expiry <= 7 * 24 * 3600:
            raise ValueError(f"presign_expiry must be 1 s..7 days, got {self.presign_expiry}")


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
    """Bytes ``[start, start + length)`` of an open file as a seekable stream, so that boto3 reads a part in
    blocks (to sign and send it) instead of the master holding a whole part in memory."""

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

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return self._length


class ObjectBody:
    """An object's bytes as they arrive: ``read(n)`` (a cut or a timeout is ``ObjectStoreUnavailable``), ``close()``.
    ``etag`` is the store's ETag: the MD5 of the bytes for an object stored in one PUT (``plain_md5``)."""

    def __init__(self, body, etag: str) -> None:
        self._body = body
        self.etag = etag.strip('"')

    @property
    def plain_md5(self) -> str | None:
        return self.etag.lower() if len(self.etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in self.etag) \
            else None

    def read(self, size: int) -> bytes:
        try:
            return self._body.read(size)
        except OSError as exc:
            raise ObjectStoreUnavailable(type(exc).__name__, f"reading the object was cut: {exc}") from None
        except Exception as exc:
            if isinstance(exc, _botocore().exceptions.BotoCoreError):
                raise ObjectStoreUnavailable(type(exc).__name__, f"reading the object was cut: {exc}") from None
            raise

    def close(self) -> None:
        self._body.close()


class ObjectStore:
    """One bucket (and key prefix) of an S3-compatible store, through boto3."""

    def __init__(self, settings: S3Settings, client=None) -> None:
        self.settings = settings
        import boto3  # here, not at the top: it costs a master ~8 MB of memory, and only the s3 backend needs it
        from botocore.config import Config

        self._s3 = client or boto3.client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region,
            aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 3, "mode": "standard"}))

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
        response = self._call("head_object", Key=key)
        return StoredObject(size=response["ContentLength"], etag=response["ETag"],
                            metadata=dict(response.get("Metadata", {})))

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
        params = {"Key": key}
        if filename:
            params["ResponseContentDisposition"] = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        return self._presign("get_object", params)

    def read(self, key: str, first: int | None = None, last: int | None = None) -> "ObjectBody":
        """The object's body, whole or bytes ``first..last``."""
        params = {"Key": key}
        if first is not None:
            params["Range"] = f"bytes={first}-{'' if last is None else last}"
        response = self._call("get_object", **params)
        return ObjectBody(response["Body"], response.get("ETag", ""))

    def list_keys(self, prefix: str) -> list[StoredKey]:
        """Every object whose key starts with ``prefix`` (paged), with its size and last change."""
        keys: list[StoredKey] = []
        token = None
        while True:
            params = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            response = self._call("list_objects_v2", **params)
            keys += [StoredKey(o["Key"], o["Size"], o["LastModified"].timestamp(), o.get("ETag", ""))
                     for o in response.get("Contents", [])]
            if not response.get("IsTruncated"):
                return keys
            token = response["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=key)

    # -- writing a file the master holds (a body relayed through it) -------------------------------

    def put_file(self, key: str, path: str, metadata: dict[str, str], on_bytes=None) -> int:
        """Store the file at ``path`` under ``key`` only if no object is there (else ``ObjectExists``), as a
        multipart upload of ``part_size`` parts; a failure aborts the upload. Returns the bytes sent."""
        size = os.path.getsize(path)
        part_size = part_size_for(size, self.settings.part_size)
        upload_id = self.start_upload(key, metadata)
        try:
            parts = []
            with open(path, "rb") as file:
                for number in range(1, part_count(size, part_size) + 1):
                    start = (number - 1) * part_size
                    length = min(part_size, size - start)
                    etag = self._call("upload_part", Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=FileSlice(file, start, length), ContentLength=length)["ETag"]
                    parts.append(StoredPart(number, length, etag))
                    if on_bytes is not None:
                        on_bytes(length)
            self.complete(key, upload_id, parts)
        except BaseException:
            self.abort(key, upload_id)
            raise
        return size

    # -- multipart upload ------------------------------------------------------------------------

    def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Create a multipart upload of ``key``; its upload id."""
        return self._call("create_multipart_upload", Key=key, Metadata=metadata or {})["UploadId"]

    def presigned_part(self, key: str, upload_id: str, number: int, sha256: bytes) -> PresignedPart:
        """A PUT for part ``number`` whose bytes must have ``sha256``: the store refuses other bytes."""
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number must be 1..{MAX_PARTS}")
        checksum = base64.b64encode(sha256).decode("ascii")
        url = self._presign("upload_part", {"Key": key, "UploadId": upload_id, "PartNumber": number,
                                            "ChecksumSHA256": checksum})
        return PresignedPart(number=number, url=url, headers={"x-amz-checksum-sha256": checksum})

    def stored_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts the store holds, in order (what a worker need not send again after a cut)."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            response = self._call("list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker)
            parts += [StoredPart(number=p["PartNumber"], size=p["Size"], etag=p["ETag"])
                      for p in response.get("Parts", [])]
            if not response.get("IsTruncated"):
                return parts
            marker = response["NextPartNumberMarker"]

    def complete(self, key: str, upload_id: str, parts: list[StoredPart]) -> None:
        """Join the parts into the object at ``key``, only if no object is there: ``ObjectExists`` otherwise
        (the upload is then still open; abort it)."""
        try:
            self._call("complete_multipart_upload", Key=key, UploadId=upload_id, IfNoneMatch="*",
                       MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]})
        except ObjectStoreError as exc:
            if exc.code in ("PreconditionFailed", "412"):
                raise ObjectExists(exc.code, f"an object exists at {key!r}; it was not replaced") from None
            raise

    def abort(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; one already gone is fine."""
        try:
            self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except ObjectStoreError as exc:
            if exc.code != "NoSuchUpload":
                raise

    def open_uploads(self) -> list[OpenUpload]:
        """Every multipart upload under the prefix not yet completed or aborted (paged)."""
        uploads: list[OpenUpload] = []
        markers: dict = {}
        while True:
            response = self._call("list_multipart_uploads", Prefix=self.settings.prefix.strip("/"), **markers)
            uploads += [OpenUpload(u["Key"], u["UploadId"], u["Initiated"].timestamp())
                        for u in response.get("Uploads", [])]
            if not response.get("IsTruncated"):
                return uploads
            markers = {"KeyMarker": response["NextKeyMarker"], "UploadIdMarker": response["NextUploadIdMarker"]}

    # -- internals --------------------------------------------------------------------------------

    def _presign(self, operation: str, params: dict) -> str:
        return self._s3.generate_presigned_url(operation, Params={"Bucket": self.settings.bucket, **params},
                                               ExpiresIn=int(self.settings.presign_expiry))

    def _call(self, operation: str, **params):
        try:
            return getattr(self._s3, operation)(Bucket=self.settings.bucket, **params)
        except _botocore().exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            kind = ObjectStoreUnavailable if code in _UNAVAILABLE_CODES else ObjectStoreError
            raise kind(code, error.get("Message") or str(exc)) from None
        except (_botocore().exceptions.BotoCoreError, OSError) as exc:  # connection refused, timeouts, DNS
            raise ObjectStoreUnavailable(type(exc).__name__, str(exc)) from None


def _botocore():
    """botocore, imported once an ``ObjectStore`` exists (so it is already loaded when an error is judged)."""
    import botocore.exceptions
    return botocore
