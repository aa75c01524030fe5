"""The wire protocol between the master and its clients (workers, converterctl): the one place that names it.

Routes, header and field names, the tus version and the error codes a client acts on. The master's
error catalogue (``master/errors.py``) declares every code with its status and message; the codes a
client reacts to are named here so that both sides spell them the same way.
"""

from __future__ import annotations

# -- routes -------------------------------------------------------------------------------------
JOBS = "/api/jobs"
UPLOADS = "/api/uploads"  # tus 1.0.0: POST creates, HEAD/PATCH/DELETE on UPLOADS/<id>
# storage.backend s3: a source sent straight to the bucket; POST creates, POST <id> resumes, POST <id>/complete
SOURCE_UPLOADS = "/api/source-uploads"
WORKER_REGISTER = "/api/worker/register"
WORKER_CLAIM = "/api/worker/claim"
WORKER_HEARTBEAT = "/api/worker/heartbeat"
WORKER_FAIL = "/api/worker/fail"
WORKER_HEALTH_RESULT = "/api/worker/health-result"  # a health check's result: the job completes with it, no output
WORKER_RELEASE = "/api/worker/release"
WORKER_DOWNLOAD = "/api/worker/download-video"
WORKER_UPLOAD = "/api/worker/upload-video"
WORKER_COMPLETE = "/api/worker/complete"  # shared-storage mode
# a profile's rules (converter_common/skip_rules.py): the source needs no conversion; the output came out larger
WORKER_SKIP = "/api/worker/skip"
WORKER_KEEP_SOURCE = "/api/worker/keep-source"
# storage.backend s3: the worker moves the bytes itself, over presigned URLs the master hands it
WORKER_SOURCE_URL = "/api/worker/source-url"  # a presigned GET of the job's source
WORKER_OUTPUT_PARTS = "/api/worker/output-parts"  # presigned PUTs of the output's parts not yet stored
WORKER_OUTPUT_COMPLETE = "/api/worker/output-complete"  # every part stored: join them and complete the job


def job_path(job_id: str, action: str = "") -> str:
    """``/api/jobs/<id>`` or ``/api/jobs/<id>/<action>`` (cancel, retry, output)."""
    return f"{JOBS}/{job_id}" + (f"/{action}" if action else "")


# -- headers and fields -------------------------------------------------------------------------
WORKER_ID_HEADER = "X-Worker-Id"
JOB_ID_HEADER = "Converter-Job-Id"  # the job a source upload will create
UPLOAD_FIELD = "video"  # the one file part of a multipart upload
TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
TUS_CONTENT_TYPE = "application/offset+octet-stream"

# -- a claim's profile: a configured profile (the master's ``profiles:``) travels in full with the job, so workers
# need no configuration of their own; a claim without it (a built-in profile, an older master) names a built-in
PROFILE_DEFINITION = "profile_definition"  # converter_common.profiles.definition_of / configured_profile

# -- job priorities: claims take the highest first, then the oldest ------------------------------------
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
CLAIMS_PAUSED_HEADER = "X-Claims-Paused"  # on a claim's 204: "queue" or "worker" while claims are paused

# -- health checks (profile health-check): what a result may carry ------------------------------------------
HEALTH_MAX_ERRORS = 50  # FFmpeg's first error lines kept; error_count says how many it printed
HEALTH_MAX_LINE = 300  # characters kept of each line
HEALTH_DECODERS = ("cpu", "vulkan")

# -- failure causes (POST /api/worker/fail) ---------------------------------------------------------
CAUSE_SOURCE = "source"  # the job's input cannot be converted anywhere: not the worker's fault
CAUSE_WORKER = "worker"  # the host failed (FFmpeg crashed, disk full, GPU gone): counts toward quarantine
FAILURE_CAUSES = (CAUSE_SOURCE, CAUSE_WORKER)

# -- error codes clients act on -------------------------------------------------------------------
JOB_NOT_FOUND = "job_not_found"
INVALID_JOB_STATE = "invalid_job_state"
NOT_LEASE_OWNER = "not_lease_owner"
JOB_GONE_CODES = frozenset({JOB_NOT_FOUND, INVALID_JOB_STATE, NOT_LEASE_OWNER})  # the job is no longer ours
OFFSET_MISMATCH = "offset_mismatch"
UPLOAD_BUSY = "upload_busy"
TUS_RESUME_CODES = frozenset({OFFSET_MISMATCH, UPLOAD_BUSY})  # 409s after a cut PATCH: HEAD again, then resume
DIGEST_MISMATCH = "digest_mismatch"
DUPLICATE_JOB = "duplicate_job"
DUPLICATE_UPLOAD = "duplicate_upload"
UPLOAD_GONE_STATUSES = frozenset({404, 410})
NOT_WITH_BUCKET = "not_with_bucket"  # a route of one storage backend asked of a master with the other
PARTS_INCOMPLETE = "parts_incomplete"  # output-complete before every part is stored: ask for the parts again  # a tus upload the master no longer has (done, expired, removed)


# -- object storage (storage.backend s3): how a file is cut into the parts of a multipart upload --------------
MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum number of parts


def part_size_for(size: int, preferred: int) -> int:
    """The part size for a file of ``size`` bytes: ``preferred``, doubled until the file fits in ``MAX_PARTS``.
    Master and worker both cut by this rule, so the part digests a worker sends match the parts it is given."""
    part_size = max(preferred, MIN_PART_SIZE)
    while -(-size // part_size) > MAX_PARTS:
        part_size *= 2
    return part_size


def part_count(size: int, part_size: int) -> int:
    """Parts of a file of ``size`` bytes (an empty file is one empty part)."""
    return max(1, -(-size // part_size))
