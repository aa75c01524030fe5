"""POST /api/jobs with a multipart body: create a job by uploading its source.

``curl -F video=@movie.mkv -F profile=h264-720p [-F output_path=out/x.mp4] [-F id=abc] .../api/jobs``

The route's handler for every method: a JSON body goes to the unchanged ``JobsHandler.post``
(read into memory, at most ``JSON_LIMIT`` bytes); a multipart body is parsed while it streams in,
exactly like the worker's upload (``upload.py``: ``FileSink``, a 1 MiB-buffered temp file, fsync,
rename). The source lands at ``incoming/<token>.<ext>`` under the storage root, a name the server
chooses; the client's file name only gives the default output ``converted/<stem>.<first container
of the profile>`` (``-<job id>`` is added to the stem when that file exists or is being written).
The fields may come in any order, so they are checked once the body is complete; on any refusal
the stored source is removed again.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
import uuid
from pathlib import Path, PurePosixPath

import tornado.ioloop
import tornado.web
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

from converter_common.profiles import BUILTIN_PROFILES
from master import errors
from master.errors import ApiError
from master.handlers.base import check_job_id
from master.handlers.jobs import JobsHandler
from master.handlers.upload import TEMP_PREFIX, TEMP_SUFFIX, UPLOAD_FIELD, WRITE_BUFFER, FileSink
from master.paths import resolve_in_root, storage_relative
from master.store import Job, OutputBusy

INCOMING_DIR = "incoming"
CONVERTED_DIR = "converted"
JSON_LIMIT = 1 << 20  # a job description is a few hundred bytes
FIELD_LIMIT = 4096  # the text fields: profile, output_path, id
TEXT_FIELDS = ("profile", "output_path", "id")
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class TextField(BaseTarget):
    """A small text part kept in memory; longer than ``FIELD_LIMIT`` bytes is refused."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._data = bytearray()

    def on_data_received(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > FIELD_LIMIT:
            raise ValueError(f"field {self.name!r} is longer than {FIELD_LIMIT} bytes")

    @property
    def value(self) -> str | None:
        if not self._started:
            return None
        try:
            return self._data.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.bad_request("invalid_field", f"field {self.name!r} is not UTF-8") from None


@tornado.web.stream_request_body
class JobsUploadHandler(JobsHandler):
    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._multipart = False
        self._json = bytearray()
        self._temp_path: Path | None = None
        self._temp_file = None
        self._parser: StreamingFormDataParser | None = None
        self._sink: FileSink | None = None
        self._fields: dict[str, TextField] = {}
        self._body_error: ApiError | None = None

    def prepare(self) -> None:
        super().prepare()  # authentication, before the body is read
        if self.request.method != "POST":
            return
        content_type = self.request.headers.get("Content-Type", "")
        self._multipart = content_type.lower().startswith("multipart/form-data")
        declared = self.request.headers.get("Content-Length")
        limit = self.config.server.max_upload_size if self._multipart else JSON_LIMIT
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
        self.request.connection.set_max_body_size(limit)
        if not self._multipart:
            return
        self.request.connection.set_body_timeout(self.config.server.timeout)
        try:
            self._parser = StreamingFormDataParser(headers=self.request.headers)
        except Exception as exc:  # a multipart type without a usable boundary
            raise errors.bad_request("invalid_multipart", f"expected multipart/form-data ({exc})") from None
        incoming = self.config.storage.root / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=incoming)
        self._temp_path = Path(name)
        os.fchmod(fd, 0o644)
        self._temp_file = os.fdopen(fd, "wb", buffering=WRITE_BUFFER)
        self._sink = FileSink(self._temp_file)
        self._parser.register(UPLOAD_FIELD, self._sink)
        for field in TEXT_FIELDS:
            self._fields[field] = TextField(field)
            self._parser.register(field, self._fields[field])

    def data_received(self, chunk: bytes) -> None:
        if not self._multipart:
            self._json += chunk
            return
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._body_error is not None:
            return  # the rest of a rejected body is read and dropped so the client gets the answer
        try:
            self._parser.data_received(chunk)
        except OSError as exc:
            self._body_error = ApiError(507, "insufficient_storage", f"cannot store upload ({exc.strerror})")
        except Exception as exc:  # ParseFailedException, an over-long field: the client's fault
            self._body_error = errors.bad_request("invalid_multipart", f"malformed multipart body ({exc})")

    async def post(self) -> None:
        if not self._multipart:
            self.request.body = bytes(self._json)
            await super().post()
            return
        if self._body_error is not None:
            raise self._body_error
        if not self._sink.started:
            raise errors.bad_request("missing_video_part", f"multipart body has no {UPLOAD_FIELD!r} file part")
        if not self._sink.finished:
            raise errors.bad_request("invalid_multipart", "multipart body ended inside the video part")
        job_id, profile, given_output = self._checked_fields()
        token = uuid.uuid4().hex[:16]
        job_id = job_id or token
        client_name = self._sink.multipart_filename or ""
        source = self.config.storage.root / INCOMING_DIR / f"{token}{_extension(client_name)}"
        outputs = self._output_candidates(given_output, client_name, profile, job_id)
        await self._close_temp_durably()
        os.replace(self._temp_path, source)
        self._temp_path = source  # removed by finish() unless the job is created
        job = self._create(job_id, source, outputs, profile)
        self._temp_path = None
        self.services.metrics.jobs_submitted.inc()
        self.services.dispatcher.notify()
        self.set_header("Location", f"/api/jobs/{job.id}")
        self.write_json(job.to_dict(), 201)

    def _checked_fields(self) -> tuple[str | None, str, str | None]:
        values = {name: field.value for name, field in self._fields.items()}
        profile = self._profile(values["profile"])
        job_id = check_job_id(values["id"]) if values["id"] else None
        return job_id, profile, values["output_path"] or None

    def _output_candidates(self, given: str | None, client_name: str, profile: str, job_id: str) -> list[Path]:
        """The output path asked for, or the default and its ``-<job id>`` variant, each checked like JSON's."""
        root = self.config.storage.root
        containers = BUILTIN_PROFILES[profile].containers
        if given is not None:
            names = [given]
        else:
            stem = safe_stem(client_name) or job_id
            names = [f"{CONVERTED_DIR}/{stem}.{containers[0]}", f"{CONVERTED_DIR}/{stem}-{job_id}.{containers[0]}"]
        candidates = [resolve_in_root(root, name, "output_path") for name in names]
        free = [path for path in candidates if not path.exists()]
        check_output(free[0] if free else candidates[0], containers, profile)
        return free

    def _create(self, job_id: str, source: Path, outputs: list[Path], profile: str) -> Job:
        """The job, at the first output path that no pending or processing job writes."""
        for output in outputs[:-1]:
            try:
                return self._insert(job_id, source, output, profile)
            except OutputBusy:
                continue
        return self._insert(job_id, source, outputs[-1], profile)

    def _insert(self, job_id: str, source: Path, output: Path, profile: str) -> Job:
        root = self.config.storage.root
        stat = source.stat()
        return self.store.create_job(
            job_id=job_id,
            source_path=storage_relative(root, source),
            output_path=storage_relative(root, output),
            profile=profile,
            source_size=stat.st_size,
            source_sha256=self._sink.sha256.hexdigest(),
            source_mtime_ns=stat.st_mtime_ns,
            max_attempts=self.config.jobs.max_attempts,
        )

    async def _close_temp_durably(self) -> None:
        temp = self._temp_file
        try:
            temp.flush()
            await tornado.ioloop.IOLoop.current().run_in_executor(None, os.fsync, temp.fileno())
        except OSError as exc:
            raise ApiError(507, "insufficient_storage", f"cannot store upload ({exc.strerror})") from None
        finally:
            temp.close()

    def finish(self, chunk=None):
        self._discard_temp()  # before the answer leaves: a refused upload leaves no file behind
        return super().finish(chunk)

    def on_connection_close(self) -> None:
        self._discard_temp()

    def _discard_temp(self) -> None:
        if self._temp_file is not None and not self._temp_file.closed:
            try:
                self._temp_file.close()
            except OSError:
                pass  # a full disk fails the final flush; the file is removed next anyway
        if self._temp_path is not None:
            self._temp_path.unlink(missing_ok=True)
            self._temp_path = None


def check_output(output: Path, containers: tuple[str, ...], profile: str) -> None:
    """The output rules of the JSON submit: not a directory, not there yet, an extension the profile allows."""
    if output.is_dir():
        raise errors.bad_request("invalid_path", "output_path is a directory")
    if output.exists():
        raise errors.conflict("output_exists", "output_path already exists; remove it or choose another path")
    extension = PurePosixPath(output.name).suffix.lstrip(".").lower()
    if extension not in containers:
        raise errors.bad_request("invalid_path", f"output_path must end in .{' or .'.join(containers)} for {profile}")


def safe_stem(filename: str) -> str:
    """The client's file name without directories or extension, reduced to letters, digits, ``. _ -`` and spaces."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = PurePosixPath(base).stem if "." in base.lstrip(".") else base
    stem = unicodedata.normalize("NFC", stem)
    return _UNSAFE_NAME.sub("_", stem).strip(" .")[:100]


def _extension(filename: str) -> str:
    suffix = PurePosixPath(filename.replace("\\", "/").rsplit("/", 1)[-1]).suffix
    return suffix.lower() if _EXTENSION.match(suffix) else ""
