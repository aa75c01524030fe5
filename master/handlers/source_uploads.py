"""/api/source-uploads: a user's source sent straight to the bucket, resumably, to create a job.

With the bucket backend, ``converterctl submit --upload`` does not push the file through the master: it
declares the file (size, SHA-256, the SHA-256 of each part cut by ``protocol.part_size_for``) and the job it
wants (profile, optional id and output path), and gets presigned part PUTs for ``incoming/<random>.<ext>``,
each checked by the store against its part's SHA-256. After a cut it asks again (``POST .../<id>``) and sends
only the parts the store lacks; ``POST .../<id>/complete`` joins the parts and creates the job, once.

The upload lives like a tus source upload (``jobs.upload_expiry``, one per job id, the job id reserved);
an expired or deleted one has its parts aborted by the master. With the local backend these routes answer
400 ``not_with_bucket``: clients use tus (``/api/uploads``) instead.
"""

from __future__ import annotations

from typing import Any

from master import errors
from master.auth import Access
from master.handlers.base import check_job_id
from master.handlers.bucket_transfer import BucketTransferHandler
from master.intake import check_priority, new_job_id, new_source_name
from master.store import Upload

MAX_FILENAME = 255


class SourceUploadsHandler(BucketTransferHandler):
    """GET: the part size; POST: declare the file and the job; 201 with the upload's id, the job id and the
    first plan."""

    access = {"GET": Access.ADMIN, "POST": Access.ADMIN}

    def get(self) -> None:
        """The part size to cut a file by (``protocol.part_size_for``); 400 ``not_with_bucket`` on local files."""
        self.bucket  # noqa: B018
        self.write_json({"part_size": self.config.storage.s3.part_size})

    async def post(self) -> None:
        bucket = self.bucket
        body = self.json_body()
        size, sha256 = self.declared_file(body)
        if size == 0:
            raise errors.INVALID_FIELD.error("a source cannot be empty")
        digests = self.part_digests(body, len(self.expected_sizes(size)))
        intake = self.services.intake
        profile = intake.profile(body.get("profile"))
        priority = check_priority(body.get("priority"))
        job_id = check_job_id(body["id"]) if body.get("id") else new_job_id()
        filename = body.get("filename") or ""
        if not isinstance(filename, str) or len(filename) > MAX_FILENAME:
            raise errors.INVALID_FIELD.error(f"filename must be a string of at most {MAX_FILENAME} characters")
        output_path = None
        if body.get("output_path"):
            output_path = self.services.storage.path(body["output_path"], "output_path")
            await intake.check_output(output_path, None, profile)
        if self.store.job_exists(job_id):
            raise errors.DUPLICATE_JOB.error(f"a job with id {job_id!r} already exists")
        key = new_source_name(filename)
        bucket_upload_id = await bucket.start_upload(key, bytes.fromhex(sha256))
        try:
            upload = self.services.uploads.create_for_bucket_source(
                job_id=job_id, length=size, profile=profile, output_path=output_path, filename=filename,
                sha256=bytes.fromhex(sha256), key=key, bucket_upload_id=bucket_upload_id, priority=priority)
        except BaseException:
            await bucket.abort_upload(key, bucket_upload_id)
            raise
        plan = await self.plan(key, bucket_upload_id, size, digests)
        self.write_json({"upload_id": upload.id, "job_id": job_id, "expires_at": upload.expires_at, **plan}, 201)


class SourceUploadHandler(BucketTransferHandler):
    """POST: the parts still missing (send the same declaration again); DELETE: give the upload up."""

    access = {"POST": Access.ADMIN, "DELETE": Access.ADMIN}

    def upload(self, upload_id: str) -> Upload:
        self.bucket  # noqa: B018 - 400 not_with_bucket first, on a master without one
        upload = self.store.get_upload(upload_id)
        if upload.bucket_upload_id is None:
            raise errors.UPLOAD_NOT_FOUND.error(f"no source upload {upload_id} to the bucket")
        return upload

    async def post(self, upload_id: str) -> None:
        upload = self.upload(upload_id)
        body = self.json_body()
        self.same_declaration(upload, body)
        digests = self.part_digests(body, len(self.expected_sizes(upload.length)))
        plan = await self.plan(upload.temp_path, upload.bucket_upload_id, upload.length, digests)
        self.write_json({"upload_id": upload.id, "job_id": upload.job_id, "expires_at": upload.expires_at, **plan})

    async def delete(self, upload_id: str) -> None:
        upload = self.upload(upload_id)
        self.services.uploads.forget(upload)
        await self.bucket.abort_upload(upload.temp_path, upload.bucket_upload_id)
        self.set_status(204)
        self.finish()

    def same_declaration(self, upload: Upload, body: dict[str, Any]) -> None:
        size, sha256 = self.declared_file(body)
        if (size, sha256) != (upload.length, upload.sha256):
            raise errors.INVALID_FIELD.error("size and sha256 differ from the upload's: this is another file;"
                                             " start a new upload")


class SourceUploadCompleteHandler(SourceUploadHandler):
    """POST: every part is stored: join them and create the job (201, the job)."""

    access = {"POST": Access.ADMIN}

    async def post(self, upload_id: str) -> None:
        upload = self.upload(upload_id)
        parts = await self.stored_in_full(upload.temp_path, upload.bucket_upload_id, upload.length)
        try:
            await self.bucket.complete_upload(upload.temp_path, upload.bucket_upload_id, parts)
        except FileExistsError:  # a random name taken: never seen, and never written over
            self.services.uploads.forget(upload)
            raise errors.OUTPUT_BUSY.error("a source by the same random name exists; send the file again") from None
        try:
            job = await self.services.intake.from_bucket_object(
                job_id=upload.job_id, source=upload.temp_path, client_name=upload.filename or "",
                output_path=upload.output_path, profile=upload.profile, sha256=bytes.fromhex(upload.sha256),
                upload_id=upload.id, priority=upload.priority)
        except BaseException:  # the object is gone again (intake removed it): so is the upload
            self.services.uploads.forget(upload)
            raise
        self.services.uploads.completed(upload)
        self.set_header("Location", f"/api/jobs/{job.id}")
        self.write_json(job.to_dict(), 201)
