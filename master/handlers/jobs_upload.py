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

import uuid

import tornado.ioloop
import tornado.web

from converter_common.noclobber import place_new
from master import errors
from master.handlers.base import CONTROL_BODY_LIMIT, check_job_id
from master.handlers.jobs import JobsHandler
from master.handlers.receiving import fsync_path
from master.handlers.upload import MultipartReceiver, SinglePart
from master.paths import resolve_in_root
from master.submission import INCOMING_DIR, check_output, default_outputs, insert_job, source_extension

FIELD_LIMIT = 4096  # the text fields: profile, output_path, id
TEXT_FIELDS = ("profile", "output_path", "id")


class TextField(SinglePart):
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
    def size(self) -> int:
        return len(self._data)

    @property
    def value(self) -> str | None:
        if not self._started:
            return None
        try:
            return self._data.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.bad_request("invalid_field", f"field {self.name!r} is not UTF-8") from None


def form_filename(raw: str) -> str:
    """The file name a browser or curl meant: they send ``"``, CR and LF in a form's filename as %22, %0D, %0A."""
    return raw.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


@tornado.web.stream_request_body
class JobsUploadHandler(MultipartReceiver, JobsHandler):
    receives_files = True

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._multipart = False
        self._fields: dict[str, TextField] = {}

    def prepare(self) -> None:
        super().prepare()  # authentication and the JSON body limit, before the body is read
        if self.request.method != "POST":
            return
        content_type = self.request.headers.get("Content-Type", "")
        self._multipart = content_type.lower().startswith("multipart/form-data")
        if not self._multipart:
            self.accept_body(CONTROL_BODY_LIMIT)
            return
        incoming = self.config.storage.root / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        self.accept_upload(incoming)
        parser = self.open_multipart(incoming)
        for field in TEXT_FIELDS:
            self._fields[field] = TextField(field)
            parser.register(field, self._fields[field])

    async def data_received(self, chunk: bytes) -> None:
        if not self._multipart:
            super().data_received(chunk)
            return
        await self.feed(chunk)

    async def post(self) -> None:
        if not self._multipart:
            await super().post()
            return
        digest = await self.finish_part()
        job_id, profile, given_output = self._checked_fields()
        token = uuid.uuid4().hex[:16]
        job_id = job_id or token
        client_name = form_filename(self._sink.multipart_filename or "")
        source = self.config.storage.root / INCOMING_DIR / f"{token}{source_extension(client_name)}"
        root = self.config.storage.root
        outputs = ([resolve_in_root(root, given_output, "output_path")] if given_output is not None
                   else default_outputs(root, client_name, profile, job_id))
        check_output(next((o for o in outputs if not o.exists()), outputs[0]), None, profile)
        await fsync_path(self._temp_path)
        place_new(self._temp_path, source)
        self._temp_path = source  # removed by finish() unless the job is created
        job = insert_job(self.store, self.config, job_id=job_id, source=source, outputs=outputs, profile=profile,
                         sha256=digest)
        self._temp_path = None
        self.announce_created(job)

    def field_bytes(self) -> int:
        return sum(field.size for field in self._fields.values())

    def _checked_fields(self) -> tuple[str | None, str, str | None]:
        values = {name: field.value for name, field in self._fields.items()}
        profile = self._profile(values["profile"])
        job_id = check_job_id(values["id"]) if values["id"] else None
        return job_id, profile, values["output_path"] or None
