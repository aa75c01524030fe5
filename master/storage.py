"""Where sources and outputs live: files under the storage root, or objects in an S3 bucket.

Jobs name their files by storage-relative paths (``incoming/3f2a.mkv``, ``converted/film.mp4``) whichever
backend holds them: under ``storage.root`` (``LocalStorage``, the embedded default) or as keys under
``storage.s3.prefix`` in ``storage.s3.bucket`` (``BucketStorage``). Both refuse the same paths, never replace
what is at an output's name (``place`` raises ``FileExistsError``: a rename that may not replace, an S3
write with ``If-None-Match: *``) and answer the same questions for job intake and delivery.

Every call to the bucket runs in a thread (its requests block) and is counted: bytes by direction, errors by
operation, presigned URLs by operation.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tornado.ioloop

from converter_common.digest import file_sha256
from converter_common.noclobber import place_new
from master import errors
from master.config import MasterConfig, S3Config
from master.metrics import MasterMetrics
from master.paths import check_output_parent, require_file, resolve_in_root, storage_relative
from master.object_store import (ObjectExists, ObjectStore, ObjectStoreError, ObjectStoreUnavailable, OpenUpload,
                                 PresignedPart, S3Settings, StoredKey, StoredObject, StoredPart)
from master.sigv4 import Credentials

log = logging.getLogger("converter.master")
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the object's SHA-256 (hex), set by us or by whoever stored it
# x-amz-meta-converter-writer: on an output we store, the job attempt that wrote it ("<job id>/<attempt>"), so
# the job can be completed with it when its master died between storing it and recording the job completed
WRITER_METADATA = "converter-writer"
WRITER_XATTR = "user.converter.writer"  # the same on a local file
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
READ_BLOCK = 4 << 20
STAGING_DIR = "staging"  # under storage.root, bucket backend only


@dataclass(frozen=True)
class SourceFacts:
    """What intake needs of a source: its size, a version stamp, and its SHA-256 when known without reading it."""

    size: int
    mtime_ns: int
    sha256: bytes | None = None


async def in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await tornado.ioloop.IOLoop.current().run_in_executor(None, call, *args)


class LocalStorage:
    """Files under ``storage.root``."""

    in_bucket = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relative: object, field: str) -> str:
        """The normalised storage-relative path of a client's ``relative``; 400 for any path that could leave."""
        return storage_relative(self.root, resolve_in_root(self.root, relative, field))

    def file(self, relative: str) -> Path:
        return resolve_in_root(self.root, relative, "path")

    async def source(self, relative: str, field: str) -> SourceFacts:
        path = self.file(relative)
        require_file(path, field)
        stat = path.stat()
        return SourceFacts(stat.st_size, stat.st_mtime_ns)

    async def digest(self, relative: str) -> bytes:
        return await in_thread(file_sha256, self.file(relative))

    async def exists(self, relative: str) -> bool:
        return self.file(relative).exists()

    def check_output_location(self, relative: str, field: str = "output_path") -> None:
        """400 unless a file could be created at ``relative``: no file where a folder must be, not a folder."""
        path = self.file(relative)
        check_output_parent(path, field)
        if path.is_dir():
            raise errors.INVALID_PATH.error(f"{field} is a directory")

    async def place(self, temp: Path, relative: str, sha256: bytes, writer: str | None = None) -> None:
        """Move the received ``temp`` to ``relative``; ``FileExistsError`` (``temp`` kept) when something is there.
        ``writer``: the job attempt storing it, kept as an extended attribute where the filesystem has them."""
        destination = self.file(relative)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.storage_error(exc) from None
        if writer:
            _set_writer(temp, writer)
        place_new(temp, destination)

    async def remove(self, relative: str) -> None:
        self.file(relative).unlink(missing_ok=True)

    async def written_by(self, relative: str, writer: str, sha256: bytes) -> bool:
        """Whether the file at ``relative`` is the one ``writer`` (a job attempt) placed, with ``sha256``: the
        rename and the job's completion happen in one IOLoop turn, but a master can still die between them."""
        path = self.file(relative)
        try:
            if os.getxattr(path, WRITER_XATTR) != writer.encode():
                return False
        except OSError:
            return False
        return await in_thread(file_sha256, path) == sha256

    def staging_dir_for(self, relative: str) -> Path:
        """Where a body bound for ``relative`` is received: beside its final name, so the rename is atomic."""
        directory = self.file(relative).parent
        directory.mkdir(parents=True, exist_ok=True)
        return directory


class BucketStorage:
    """Objects in ``storage.s3.bucket`` under ``storage.s3.prefix``; ``storage.root`` holds relayed bodies."""

    in_bucket = True

    def __init__(self, config: MasterConfig, metrics: MasterMetrics, store: ObjectStore | None = None) -> None:
        self.root = config.storage.root
        self.settings = config.storage.s3
        self.metrics = metrics
        self.objects = store or ObjectStore(s3_settings(self.settings))

    # -- paths and facts ---------------------------------------------------------------------------

    def path(self, relative: object, field: str) -> str:
        """The same rules as for files (``master.paths``), checked without a filesystem: a key is a name."""
        resolve_in_root(Path("/nonexistent-converter-root"), relative, field)  # refuses what a file path would
        return os.path.normpath(str(relative))

    def key(self, relative: str) -> str:
        return self.objects.key(relative)

    def relative(self, key: str) -> str:
        """The storage-relative path of one of our keys (the prefix taken off)."""
        prefix = self.settings.prefix.strip("/")
        return key[len(prefix) + 1:] if prefix else key

    async def list(self, relative_prefix: str) -> list[StoredKey]:
        """The objects whose paths start with ``relative_prefix``."""
        prefix = self.settings.prefix.strip("/")
        return await self.call("list", self.objects.list_keys, f"{prefix}/{relative_prefix}" if prefix
                               else relative_prefix)

    async def head(self, relative: str) -> StoredObject | None:
        try:
            return await self.call("head", self.objects.head, self.key(relative))
        except ObjectStoreError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    async def source(self, relative: str, field: str) -> SourceFacts:
        stored = await self.head(relative)
        if stored is None:
            raise errors.SOURCE_NOT_FOUND.error(f"{field} does not exist in the bucket")
        digest = stored.metadata.get(SHA256_METADATA, "").lower()
        return SourceFacts(stored.size, _etag_stamp(stored.etag),
                           bytes.fromhex(digest) if _SHA256_HEX.match(digest) else None)

    async def digest(self, relative: str) -> bytes:
        """Read the object once to hash it (a source stored without ``x-amz-meta-sha256``)."""
        return await self.call("get", self._hash_object, self.key(relative))

    def _hash_object(self, key: str) -> bytes:
        """SHA-256 of the object; checked against its MD5 ETag where it has one, so bytes damaged on the way are
        never recorded as the source's digest."""
        hasher, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        body = self.objects.read(key)
        try:
            while block := body.read(READ_BLOCK):
                hasher.update(block)
                md5.update(block)
                self.metrics.object_store_bytes.labels("download").inc(len(block))
        finally:
            body.close()
        if body.plain_md5 is not None and md5.hexdigest() != body.plain_md5:
            raise ObjectStoreUnavailable("BadDigest", f"the bytes of {key!r} read do not match its ETag")
        return hasher.digest()

    async def exists(self, relative: str) -> bool:
        return await self.head(relative) is not None

    def check_output_location(self, relative: str, field: str = "output_path") -> None:
        pass  # a bucket has no folders that could be files

    # -- writing -----------------------------------------------------------------------------------

    async def place(self, temp: Path, relative: str, sha256: bytes, writer: str | None = None) -> None:
        """Send the received ``temp`` to ``relative`` (only if no object is there: ``FileExistsError``, ``temp``
        kept), then remove ``temp``. ``writer``: the job attempt storing it (``written_by``)."""
        count = self.metrics.object_store_bytes.labels("upload").inc
        try:
            await self.call("put", self.objects.put_file, self.key(relative), str(temp),
                            _metadata(sha256, writer), count)
        except ObjectExists:
            raise FileExistsError(relative) from None
        temp.unlink(missing_ok=True)

    async def remove(self, relative: str) -> None:
        await self.call("delete", self.objects.delete, self.key(relative))

    def staging_dir_for(self, relative: str) -> Path:
        """Bodies relayed through the master wait here until they are sent to the bucket."""
        directory = self.root / STAGING_DIR
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    # -- what workers and clients are handed ---------------------------------------------------------

    def presigned_get(self, relative: str, filename: str | None = None) -> str:
        url = self.objects.presigned_get(self.key(relative), filename)
        self.metrics.presigned_urls.labels("get").inc()
        return url

    def presigned_parts(self, relative: str, upload_id: str, digests: dict[int, bytes]) -> list[PresignedPart]:
        parts = [self.objects.presigned_part(self.key(relative), upload_id, number, digest)
                 for number, digest in sorted(digests.items())]
        self.metrics.presigned_urls.labels("put_part").inc(len(parts))
        return parts

    async def start_upload(self, relative: str, sha256: bytes, writer: str | None = None) -> str:
        return await self.call("create_upload", self.objects.start_upload, self.key(relative),
                               _metadata(sha256, writer))

    async def written_by(self, relative: str, writer: str, sha256: bytes) -> bool:
        """Whether the object at ``relative`` is the one ``writer`` (a job attempt) stored, with ``sha256``."""
        return is_written_by(await self.head(relative), writer, sha256)

    async def stored_parts(self, relative: str, upload_id: str) -> list[StoredPart]:
        return await self.call("list_parts", self.objects.stored_parts, self.key(relative), upload_id)

    async def complete_upload(self, relative: str, upload_id: str, parts: list[StoredPart]) -> None:
        """Join the parts at ``relative``; ``FileExistsError`` when an object is there (the upload is aborted)."""
        try:
            await self.call("complete_upload", self.objects.complete, self.key(relative), upload_id, parts)
        except ObjectExists:
            await self.abort_upload(relative, upload_id)
            raise FileExistsError(relative) from None
        self.metrics.object_store_bytes.labels("upload").inc(sum(part.size for part in parts))

    async def abort_upload(self, relative: str, upload_id: str) -> None:
        await self.call("abort_upload", self.objects.abort, self.key(relative), upload_id)

    async def open_uploads(self) -> list[OpenUpload]:
        return await self.call("list_uploads", self.objects.open_uploads)

    async def abort_abandoned(self, live: set[str], older_than: float) -> list[OpenUpload]:
        """Abort every open multipart upload under the prefix that no job is using (``live`` upload ids) and
        that began before ``older_than`` (one just created may not be recorded yet); the aborted ones."""
        aborted = []
        for upload in await self.open_uploads():
            if upload.upload_id not in live and upload.initiated < older_than:
                await self.call("abort_upload", self.objects.abort, upload.key, upload.upload_id)
                aborted.append(upload)
        return aborted

    # -- the one way to call the bucket ----------------------------------------------------------------

    async def call(self, operation: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a thread; an error is counted under ``operation`` and re-raised."""
        try:
            return await in_thread(function, *args)
        except ObjectStoreError as exc:
            if not isinstance(exc, ObjectExists) and exc.code not in ("404", "NoSuchKey", "NotFound"):
                self.metrics.object_store_errors.labels(operation).inc()
                log.warning("object store: %s failed: %s", operation, exc)
            raise


Storage = LocalStorage | BucketStorage


def is_written_by(stored: StoredObject | None, writer: str, sha256: bytes) -> bool:
    """Whether ``stored`` (a HEAD's answer; None: nothing there) carries ``writer`` and ``sha256``."""
    return stored is not None and stored.metadata.get(WRITER_METADATA) == writer \
        and stored.metadata.get(SHA256_METADATA, "").lower() == sha256.hex()


def _set_writer(path: Path, writer: str) -> None:
    try:
        os.setxattr(path, WRITER_XATTR, writer.encode())
    except OSError:
        pass  # a filesystem without user extended attributes: such a file is never taken as this attempt's


def _metadata(sha256: bytes, writer: str | None) -> dict[str, str]:
    return {SHA256_METADATA: sha256.hex(), **({WRITER_METADATA: writer} if writer else {})}


def make_storage(config: MasterConfig, metrics: MasterMetrics) -> Storage:
    return BucketStorage(config, metrics) if config.storage.in_bucket else LocalStorage(config.storage.root)


def s3_settings(config: S3Config, environ: dict[str, str] | None = None) -> S3Settings:
    credentials = s3_credentials(config, os.environ if environ is None else environ)
    return S3Settings(endpoint=config.endpoint, bucket=config.bucket, access_key=credentials.access_key,
                      secret_key=credentials.secret_key, session_token=credentials.session_token,
                      region=config.region, prefix=config.prefix, presign_expiry=config.presign_expiry,
                      part_size=config.part_size)


def s3_credentials(config: S3Config, environ) -> Credentials:
    """The keys the master signs with, from the first of: ``storage.s3.credentials_file``; the environment's
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``); the shared-credentials file
    (``AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``), profile ``AWS_PROFILE`` or ``default``.
    ``ValueError`` with a one-line reason when none holds keys."""
    if config.credentials_file is not None:
        return read_credentials(Path(os.path.expandvars(str(config.credentials_file))))
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"],
                           environ.get("AWS_SESSION_TOKEN") or None)
    shared = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path("~/.aws/credentials").expanduser())
    if shared.is_file():
        return read_credentials(shared, environ.get("AWS_PROFILE") or "default")
    raise ValueError("storage.s3: no credentials: set storage.s3.credentials_file, or AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials")


def read_credentials(path: Path, profile: str = "default") -> Credentials:
    """The keys of ``[profile]`` in an AWS shared-credentials file; ``ValueError`` with a one-line reason."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
        section = parser[profile]
        token = section.get("aws_session_token", "").strip() or None
        return Credentials(section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip(), token)
    except (OSError, configparser.Error, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not an AWS credentials file with a [{profile}] aws_access_key_id and "
                         f"aws_secret_access_key ({exc.__class__.__name__})") from None


def _etag_stamp(etag: str) -> int:
    """A version stamp for an object in the jobs table's ``source_mtime_ns`` column: its ETag, as a number."""
    return int(hashlib.sha256(etag.encode()).hexdigest()[:15], 16)


