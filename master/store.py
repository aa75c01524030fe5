"""The job store: every SQL statement of the master lives here.

Each change of a job's status goes through ``_move``: one UPDATE whose WHERE clause names the
allowed old states (from ``master.states``), so a race between two requests (or two masters) is settled by
the database. The SQL is SQLite's; ``master/database.py`` runs the same statements on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from master.database import PoolState, open_database
from master.states import ACTIVE, JobStatus, Transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    source_path      TEXT NOT NULL,
    output_path      TEXT NOT NULL,
    profile          TEXT NOT NULL,
    source_size      INTEGER NOT NULL,
    source_sha256    TEXT NOT NULL,
    source_mtime_ns  INTEGER NOT NULL,
    output_size      INTEGER,
    output_sha256    TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    worker_id        TEXT,
    lease_expires_at REAL,
    not_before       REAL NOT NULL DEFAULT 0,
    progress         REAL,
    error            TEXT,
    conversion_seconds REAL,
    accel            TEXT,
    speed            REAL,
    vulkan_fallback  TEXT,
    health           TEXT,  -- a health check's result (JSON: healthy, errors, decoder); NULL for conversions
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    claimed_at       REAL,
    finished_at      REAL,
    waiting          TEXT,  -- why a pending job is not being claimed, when the master can tell
    priority         INTEGER NOT NULL DEFAULT 0, -- claims take the highest first, then the oldest
    reason           TEXT,  -- why the job was skipped, or why its source was kept as the output (kept_source)
    kept_source      INTEGER NOT NULL DEFAULT 0  -- 1: the output is a copy of the source (the conversion was larger)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, not_before);
CREATE TABLE IF NOT EXISTS workers (
    id            TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    capabilities  TEXT NOT NULL,
    concurrency   INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    last_seen_at  REAL NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    quarantined_until    REAL NOT NULL DEFAULT 0,
    cache_free_bytes     INTEGER, -- what it last said it can hold (claim's cache_free_bytes)
    paused_at            REAL,    -- an operator paused it (POST /api/workers/<id>/pause): its claims get nothing
    schedule             TEXT     -- JSON its registration reported: worker.schedule windows, open now or not
);
CREATE TABLE IF NOT EXISTS job_attempts (  -- one row per attempt that ended, written by the job_attempt_ended trigger
    job_id             TEXT NOT NULL,
    attempt            INTEGER NOT NULL,
    worker_id          TEXT,
    accel              TEXT,
    vulkan_fallback    TEXT,
    claimed_at         REAL NOT NULL,
    ended_at           REAL NOT NULL,
    outcome            TEXT NOT NULL,  -- the status the job went to: completed, failed, pending (again), cancelled
    error              TEXT,
    conversion_seconds REAL,
    speed              REAL,
    PRIMARY KEY (job_id, claimed_at)  -- attempt numbers start again after a retry
);
CREATE TABLE IF NOT EXISTS queue_pause (  -- one row while the whole queue is paused: no claim gets a job
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    worker_id   TEXT,
    length      INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL DEFAULT 0,
    temp_path   TEXT NOT NULL,
    sha256      TEXT,
    created_at  REAL NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'output',  -- output: a job's converted file; source: a new job's source
    profile     TEXT,                            -- source uploads: the job to create once complete
    output_path TEXT,
    filename    TEXT,
    attempt     INTEGER,                         -- output uploads: the job's attempt that made it
    expires_at  REAL,                            -- tus expiration: removed when not continued by then
    bucket_upload_id TEXT,                       -- a source sent straight to the bucket: its S3 multipart upload
    priority    INTEGER                          -- source uploads: the priority asked for (NULL: the profile's)
);
CREATE TABLE IF NOT EXISTS bucket_uploads (  -- storage.backend s3: the multipart upload of a job's output attempt
    job_id     TEXT PRIMARY KEY,
    attempt    INTEGER NOT NULL,
    upload_id  TEXT NOT NULL,    -- the S3 UploadId
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,    -- the whole output's SHA-256, as the worker declared it
    created_at REAL NOT NULL
);
"""
# One writer per output path: at most one pending or processing job may name it (create, retry, requeue
# all pass through this index, so no code path can give an output two owners).
# Claims give nothing while the queue is paused or the claiming worker (``:worker``) is; both uncorrelated, so each
# database evaluates them once per claim, before it reads the index of claimable jobs.
_CLAIMS_OPEN = ("NOT EXISTS (SELECT 1 FROM queue_pause)"
                " AND NOT EXISTS (SELECT 1 FROM workers WHERE id = :worker AND paused_at IS NOT NULL)")
OUTPUT_OWNER_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_owner_per_output ON jobs (output_path)
    WHERE status IN ('pending', 'processing')
"""


_ATTEMPT_COLUMNS = ("job_id, attempt, worker_id, accel, vulkan_fallback, claimed_at, ended_at, outcome, error,"
                    " conversion_seconds, speed")
# In the trigger: OLD is the job while its attempt ran (its worker; a requeue clears worker_id), NEW what it ended as.
# A release (the worker stopping) gives the attempt back: not an attempt that ended.
_ATTEMPT_ENDS = "OLD.status = 'processing' AND NEW.status <> 'processing' AND NEW.attempts = OLD.attempts"
_ATTEMPT_ROW = (f"INSERT INTO job_attempts ({_ATTEMPT_COLUMNS}) VALUES (NEW.id, NEW.attempts, OLD.worker_id,"
                " COALESCE(NEW.accel, OLD.accel), NEW.vulkan_fallback, OLD.claimed_at, NEW.updated_at, NEW.status,"
                " NEW.error, NEW.conversion_seconds, NEW.speed)")


# The webhooks' outbox (migration 6). An event is written in the statement that causes it (a job's status change,
# by the webhook_job_event trigger) or by a guarded INSERT (worker lost, queue drained: ``ref`` and the unique index
# make it once); a master fans each event out into one delivery per subscription that wants it, then sends them.
WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id          TEXT PRIMARY KEY,  -- a UUID: the receivers' key for deduplication
    type        TEXT NOT NULL,     -- job.completed, job.failed, job.cancelled, worker.lost, queue.drained
    job_id      TEXT,
    worker_id   TEXT,
    ref         REAL,              -- worker.lost: the worker's last_seen_at; queue.drained: the last job event's time
    created_at  REAL NOT NULL,
    fanned_out  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_events_unfanned ON webhook_events (created_at) WHERE fanned_out = 0;
CREATE INDEX IF NOT EXISTS webhook_events_of_jobs ON webhook_events (created_at) WHERE job_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS webhook_events_once ON webhook_events (type, COALESCE(worker_id, ''), ref)
    WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    job_id           TEXT,
    worker_id        TEXT,
    subscription     TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,  -- the JSON sent, the same bytes at every attempt
    status           TEXT NOT NULL,  -- pending, sending (claimed by one master), delivered, failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    claimed_by       TEXT,
    claim_expires_at REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_at     REAL,
    last_error       TEXT,
    last_status      INTEGER,
    UNIQUE (event_id, subscription)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_creation ON webhook_deliveries (created_at);
"""
WEBHOOK_JOB_EVENTS = ("completed", "failed", "cancelled", "skipped")  # skipped: since migration 7
_WEBHOOK_JOB_EVENT_WHEN = ("NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status <> NEW.status")
# A random (version 4) UUID, in each dialect
_UUID_SQL = {"postgres": "gen_random_uuid()::text",
             "sqlite": "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)"
                       " || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-'"
                       " || hex(randomblob(6)))"}
_WEBHOOK_DELIVERY_COLUMNS = ("id, event_id, event_type, job_id, worker_id, subscription, url, status, attempts,"
                             " next_attempt_at, claimed_by, claim_expires_at, created_at, updated_at, delivered_at,"
                             " last_error, last_status")

# (number, what it does, how): applied once each, in order, at start-up (``JobStore._migrate``). A new schema change
# is a new number at the end; a released migration is never edited.
MIGRATIONS = (
    (1, "the first schema", lambda store: store._create_schema()),
    (2, "a partial index of pending jobs for claims", lambda store: store._index_claimable_jobs()),
    (3, "an index for listing jobs in submission order", lambda store: store._index_job_list()),
    (4, "job priorities, queue and worker pauses, worker schedules", lambda store: store._add_priorities_and_pauses()),
    (5, "every attempt of a job kept, by a trigger", lambda store: store._record_attempts()),
    (6, "the webhooks' outbox: events (a trigger writes a job's) and deliveries", lambda store: store._add_webhooks()),
    (7, "skipped jobs and kept sources: jobs.reason, jobs.kept_source, job.skipped webhook events",
     lambda store: store._add_skip_rules()),
    (8, "health checks: jobs.health, and jobs without an output path outside the one-owner index",
     lambda store: store._add_health_checks()),
)


class StoreError(Exception):
    """Base of the store's domain errors; handlers map them to API errors."""


class JobNotFound(StoreError):
    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class DuplicateJob(StoreError):
    def __init__(self, job_id: str):
        super().__init__(f"a job with id {job_id!r} already exists")
        self.job_id = job_id


class OutputBusy(StoreError):
    def __init__(self, output_path: str, job_id: str):
        super().__init__(f"job {job_id!r} is already writing {output_path!r}")


class DuplicateUpload(StoreError):
    def __init__(self, upload: "Upload"):
        super().__init__(f"upload {upload.id} is already sending job {upload.job_id!r}; resume it or delete it")
        self.upload = upload


class InvalidTransition(StoreError):
    def __init__(self, job: "Job", transition: Transition):
        wanted = " or ".join(s.value for s in transition.sources)
        super().__init__(f"job {job.id!r} is {job.status.value}, must be {wanted} to become {transition.target.value}")
        self.job = job
        self.transition = transition


class JobNotPending(StoreError):
    def __init__(self, job: "Job"):
        super().__init__(f"job {job.id!r} is {job.status.value}; only a pending job's priority can change")
        self.job = job


class WorkerNotFound(StoreError):
    def __init__(self, worker_id: str):
        super().__init__(f"no worker with id {worker_id!r} has registered")
        self.worker_id = worker_id


class GuardFailed(StoreError):
    def __init__(self, job: "Job", guard: str):
        super().__init__(f"job {job.id!r}: condition {guard!r} does not hold")
        self.job = job


class NotOwner(StoreError):
    def __init__(self, job: "Job", worker_id: str):
        super().__init__(f"job {job.id!r} is not leased to worker {worker_id!r}")
        self.job = job


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    source_path: str
    output_path: str
    profile: str
    source_size: int
    source_sha256: str
    source_mtime_ns: int
    output_size: int | None
    output_sha256: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_expires_at: float | None
    not_before: float
    progress: float | None
    error: str | None
    conversion_seconds: float | None
    accel: str | None
    speed: float | None
    vulkan_fallback: str | None
    created_at: float
    updated_at: float
    claimed_at: float | None
    finished_at: float | None
    waiting: str | None = None
    health: dict[str, Any] | None = field(default=None, hash=False)  # a health check's result (profile health-check)
    priority: int = 0
    reason: str | None = None  # skipped: why; kept_source: why the source was kept
    kept_source: bool = False  # the output is the source's bytes: the conversion came out larger

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        columns = dict(zip(row.keys(), row))
        values = {name: columns[name] for name in _JOB_FIELDS}
        values["health"] = json.loads(values["health"]) if values["health"] else None
        values["status"] = JobStatus(values["status"])
        values["kept_source"] = bool(values["kept_source"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["saved_bytes"] = self.saved_bytes
        return data

    @property
    def saved_bytes(self) -> int | None:
        """Source bytes minus output bytes once an output is stored (negative when the output is larger)."""
        return None if self.output_size is None else self.source_size - self.output_size


_JOB_FIELDS = tuple(Job.__dataclass_fields__)


@dataclass(frozen=True)
class Worker:
    id: str
    hostname: str
    capabilities: dict[str, Any]
    concurrency: int
    registered_at: float
    last_seen_at: float
    consecutive_failures: int
    quarantined_until: float
    cache_free_bytes: int | None = None
    paused_at: float | None = None
    schedule: dict[str, Any] | None = None  # what its registration reported (``worker.schedule``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def scheduled_off(self) -> bool:
        """Outside its ``worker.schedule`` windows when it last said."""
        return bool(self.schedule) and self.schedule.get("open") is False


@dataclass(frozen=True)
class Upload:
    """A resumable (tus) upload of a job's output, in progress."""

    id: str
    job_id: str
    worker_id: str | None
    length: int
    offset: int
    temp_path: str  # relative to the storage root
    sha256: str | None
    created_at: float
    kind: str = "output"
    profile: str | None = None
    output_path: str | None = None
    filename: str | None = None
    attempt: int | None = None
    expires_at: float | None = None
    bucket_upload_id: str | None = None  # a source sent straight to the bucket (temp_path is then its key)
    priority: int | None = None  # a source upload: the job's priority (None: the profile's default)


@dataclass(frozen=True)
class BucketUpload:
    """The S3 multipart upload that receives one attempt of a job's output (``storage.backend: s3``)."""

    job_id: str
    attempt: int
    upload_id: str
    size: int
    sha256: str
    created_at: float


class UploadNotFound(StoreError):
    def __init__(self, upload_id: str):
        super().__init__(f"no upload with id {upload_id!r}")
        self.upload_id = upload_id


class JobStore:
    """The queue, in SQLite (a file) or PostgreSQL (``postgresql://...``, shared by several masters). Thread-safe:
    one statement at a time under a lock (calls are short). With PostgreSQL each takes a connection from a small
    pool; while the database is unreachable every call raises ``DatabaseUnavailable`` (``master/database.py``)."""

    def __init__(self, path: str | Path):
        self.path = path
        self._lock = threading.RLock()
        self._db = open_database(path)
        self.dialect = self._db.dialect
        self.schema_version = self._migrate()

    def _migrate(self) -> int:
        """Apply the numbered ``MIGRATIONS`` the database has not had, in order, each in one transaction under
        a lock (SQLite: the write lock; PostgreSQL: a transaction-level advisory lock, so two masters starting
        at once migrate one after the other); the version the database is at."""
        version = 0
        for number, _name, apply in MIGRATIONS:
            with self._transaction():
                if self.dialect == "postgres":
                    self._db.execute("SELECT pg_advisory_xact_lock(4242001)")
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                                 " applied_at REAL NOT NULL)")
                done = self._db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (number,)).fetchone()
                if done is None:
                    apply(self)
                    self._db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                                     (number, time.time()))
            version = number
        return version

    def _create_schema(self) -> None:
        """Migration 1: the tables as this build knows them; a database made before numbered migrations gets the
        columns it lacks (each nullable or with a default, so old rows read as NULL or the default)."""
        schema = re.sub(r"--[^\n]*", "", postgres_schema(SCHEMA) if self.dialect == "postgres" else SCHEMA)
        for statement in schema.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._add_missing_columns()
        self._db.execute(OUTPUT_OWNER_INDEX)

    def _index_job_list(self) -> None:
        """Migration 3: ``GET /api/jobs`` pages in submission order; without an index every page sorts the whole
        table (71 ms a page at 20,000 jobs on PostgreSQL, ``bench/queue_history.py``)."""
        order = "created_at, seq" if self.dialect == "postgres" else "created_at"
        self._db.execute(f"CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs ({order})")
        self._db.execute(f"CREATE INDEX IF NOT EXISTS jobs_by_status_creation ON jobs (status, {order})")

    def _index_claimable_jobs(self) -> None:
        """Migration 2: claims look only at pending jobs, in insertion order; a partial index keeps that fast
        however many finished jobs the table holds."""
        order = "seq" if self.dialect == "postgres" else "not_before"
        self._db.execute(f"CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs ({order}) WHERE status = 'pending'")

    def _add_priorities_and_pauses(self) -> None:
        """Migration 4: ``jobs.priority``, ``workers.paused_at`` and ``schedule``, the ``queue_pause`` table; the
        partial index of claimable jobs is remade in claim order (highest priority, then oldest), so a claim still
        reads one index entry however many jobs are pending or finished (``bench/queue_history.py``)."""
        self._create_schema()  # every statement is IF NOT EXISTS: adds only the new table and columns
        self._db.execute("DROP INDEX IF EXISTS jobs_claimable")
        order = "priority DESC, seq" if self.dialect == "postgres" else "priority DESC"  # SQLite appends rowid
        self._db.execute(f"CREATE INDEX jobs_claimable ON jobs ({order}) WHERE status = 'pending'")

    def _record_attempts(self) -> None:
        """Migration 5: ``job_attempts``, one row for each attempt that ended, written by a trigger on the job's
        status leaving ``processing`` (so every transition stays one guarded statement); the attempts already
        ended keep what the jobs table still says of their latest one."""
        self._create_schema()  # adds the job_attempts table
        if self.dialect == "postgres":
            self._db.execute(f"CREATE OR REPLACE FUNCTION job_attempt_ended() RETURNS trigger LANGUAGE plpgsql AS"
                             f" $$ BEGIN {_ATTEMPT_ROW} ON CONFLICT DO NOTHING; RETURN NULL; END $$")
            self._db.execute("CREATE OR REPLACE TRIGGER job_attempt_ended AFTER UPDATE OF status ON jobs FOR EACH ROW"
                             f" WHEN ({_ATTEMPT_ENDS}) EXECUTE FUNCTION job_attempt_ended()")
        else:
            self._db.execute(f"CREATE TRIGGER IF NOT EXISTS job_attempt_ended AFTER UPDATE OF status ON jobs"
                             f" WHEN {_ATTEMPT_ENDS} BEGIN {_ATTEMPT_ROW.replace('INSERT', 'INSERT OR IGNORE', 1)};"
                             " END")
        self._db.execute(f"INSERT INTO job_attempts ({_ATTEMPT_COLUMNS}) SELECT id, attempts, worker_id, accel,"
                         " vulkan_fallback, claimed_at, COALESCE(finished_at, updated_at), status, error,"
                         " conversion_seconds, speed FROM jobs WHERE attempts > 0 AND status <> 'processing'"
                         " AND claimed_at IS NOT NULL")

    def _add_webhooks(self) -> None:
        """Migration 6: the webhooks' outbox (``WEBHOOK_SCHEMA``) and the trigger that writes a job's event in the
        same statement as the status change that causes it (so the guarded UPDATE stays one statement)."""
        schema = re.sub(r"--[^\n]*", "", postgres_schema(WEBHOOK_SCHEMA) if self.dialect == "postgres"
                        else WEBHOOK_SCHEMA)
        for statement in schema.split(";"):
            if statement.strip():
                self._db.execute(statement)
        if self.dialect == "postgres":
            self._db.execute(f"CREATE OR REPLACE FUNCTION webhook_job_event() RETURNS trigger LANGUAGE plpgsql AS"
                             f" $$ BEGIN {self._webhook_event_row()}; RETURN NULL; END $$")
        self._webhook_job_event_trigger(_WEBHOOK_JOB_EVENT_WHEN)

    def _webhook_event_row(self) -> str:
        """The webhook trigger's body: the job's event (``job.<new status>``) into the outbox."""
        return (f"INSERT INTO webhook_events (id, type, job_id, created_at) VALUES ({_UUID_SQL[self.dialect]},"
                " 'job.' || NEW.status, NEW.id, NEW.updated_at)")

    def _webhook_job_event_trigger(self, when: str) -> None:
        """(Re)make the trigger that writes a job's webhook event when its status changes as ``when`` says."""
        if self.dialect == "postgres":
            self._db.execute("CREATE OR REPLACE TRIGGER webhook_job_event AFTER UPDATE OF status ON jobs FOR EACH ROW"
                             f" WHEN ({when}) EXECUTE FUNCTION webhook_job_event()")
        else:
            self._db.execute("DROP TRIGGER IF EXISTS webhook_job_event")
            self._db.execute(f"CREATE TRIGGER webhook_job_event AFTER UPDATE OF status ON jobs WHEN {when}"
                             f" BEGIN {self._webhook_event_row()}; END")

    def _add_skip_rules(self) -> None:
        """Migration 7: ``jobs.reason`` and ``jobs.kept_source`` (a profile's skip and keep-smaller rules); the
        webhook trigger of migration 6 remade to write ``job.skipped`` events too."""
        self._add_missing_columns()  # the two columns
        when = "NEW.status IN ('completed', 'failed', 'cancelled', 'skipped') AND OLD.status <> NEW.status"
        self._webhook_job_event_trigger(when)

    def _add_health_checks(self) -> None:
        """Migration 8: ``jobs.health``; a health-check job has no output (``output_path`` empty), so the index of
        one owner per output leaves empty paths out (any number of health checks may be active at once)."""
        self._add_missing_columns()
        self._db.execute("DROP INDEX IF EXISTS jobs_one_owner_per_output")
        self._db.execute("CREATE UNIQUE INDEX jobs_one_owner_per_output ON jobs (output_path)"
                         " WHERE status IN ('pending', 'processing') AND output_path <> ''")

    def _add_missing_columns(self) -> None:
        """Bring a database made by an earlier build up to ``SCHEMA``: columns it lacks are added.

        Every column added since the first schema is nullable or has a default, so ``ALTER TABLE ADD
        COLUMN`` is the whole migration; old rows read as NULL or the default. A column the schema
        wants NOT NULL without a default cannot be added this way and is refused with its name.
        """
        wanted = sqlite3.connect(":memory:")
        try:
            wanted.executescript(SCHEMA)
            tables = [row[0] for row in wanted.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                have = self._db.columns(table)
                for _cid, name, kind, not_null, default, _pk in wanted.execute(f"PRAGMA table_info({table})"):
                    if name in have:
                        continue
                    if not_null and default is None:
                        raise sqlite3.OperationalError(
                            f"{self.path}: table {table} lacks column {name}, which cannot be added to old rows")
                    kind = postgres_schema(kind) if self.dialect == "postgres" else kind
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"
                                     + (" NOT NULL" if not_null else "")
                                     + (f" DEFAULT {default}" if default is not None else ""))
        finally:
            wanted.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def available(self) -> bool:
        """False while the database is known to be unreachable (PostgreSQL; SQLite always answers)."""
        return self._db.available

    @property
    def reconnects(self) -> int:
        """How many times the database came back after being unreachable."""
        return self._db.reconnects

    def connection_state(self) -> PoolState:
        """The database connections: in use, idle, and requests waiting for one."""
        return self._db.pool_state()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (the connection autocommits otherwise); nested uses join the outer one."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            with self._db.transaction():
                yield

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, *, job_id: str, source_path: str, output_path: str, profile: str,
                   source_size: int, source_sha256: str, source_mtime_ns: int, max_attempts: int,
                   consumed_upload: str | None = None, priority: int = 0, now: float | None = None) -> Job:
        """A new pending job; a source upload it was made from (``consumed_upload``) is forgotten with it."""
        now = time.time() if now is None else now
        with self._transaction():
            busy = self._db.execute(
                f"SELECT id FROM jobs WHERE output_path = ? AND output_path <> '' AND status IN ({_marks(ACTIVE)})",
                (output_path, *_values(ACTIVE)),
            ).fetchone()
            if busy:
                raise OutputBusy(output_path, busy["id"])
            try:
                row = self._db.execute(
                    "INSERT INTO jobs (id, status, source_path, output_path, profile, source_size, source_sha256,"
                    " source_mtime_ns, max_attempts, created_at, updated_at, priority)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (job_id, JobStatus.PENDING.value, source_path, output_path, profile, source_size, source_sha256,
                     source_mtime_ns, max_attempts, now, now, priority),
                ).fetchone()
            except self._db.IntegrityError as exc:
                if _is_output_owner_violation(exc):
                    raise OutputBusy(output_path, "another job") from exc  # a race the check above lost
                raise DuplicateJob(job_id) from exc
            if consumed_upload is not None:
                self._db.execute("DELETE FROM uploads WHERE id = ?", (consumed_upload,))
            self._notify_claimable([job_id])
        return Job.from_row(row)

    def _notify_claimable(self, job_ids: list[str]) -> None:
        """PostgreSQL: tell every master's listener (``master.wakeup.JobNotices``) that jobs can be claimed; sent
        when the transaction commits, ids only. SQLite has one master, which wakes its own claimers."""
        if self.dialect == "postgres" and job_ids:
            self._db.execute("SELECT pg_notify('converter_jobs', ?)", (",".join(job_ids)[:7000],))

    def _output_busy(self, output_path: str) -> OutputBusy:
        row = self._db.execute(f"SELECT id FROM jobs WHERE output_path = ? AND status IN ({_marks(ACTIVE)})",
                               (output_path, *_values(ACTIVE))).fetchone()
        return OutputBusy(output_path, row["id"] if row else "?")

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def job_exists(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100, offset: int = 0) -> tuple[list[Job], int]:
        where, params = ("WHERE status = ?", (status.value,)) if status else ("", ())
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at, rowid LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
        return [Job.from_row(r) for r in rows], total

    def search_jobs(self, *, status: JobStatus | None = None, profile: str | None = None,
                    worker_id: str | None = None, text: str | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[list[Job], int]:
        """The console's queue: newest first, one page; ``text`` is a job id, or a part of its source or output
        path (``%`` and ``_`` taken literally)."""
        clauses, params = [], []
        for column, value in (("status", status.value if status else None), ("profile", profile),
                              ("worker_id", worker_id)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if text:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"
            clauses.append("(id = ? OR source_path LIKE ? ESCAPE '\\' OR output_path LIKE ? ESCAPE '\\')")
            params += [text, pattern, pattern]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC"
                                    " LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
        return [Job.from_row(r) for r in rows], total

    def finished_per_hour(self, hours: int, now: float | None = None) -> list[tuple[int, int, int, int]]:
        """The console's charts: (hour start, jobs completed, source bytes, output bytes) for each hour of the last
        ``hours`` that had a completed job."""
        now = time.time() if now is None else now
        since = (int(now // 3600) - hours + 1) * 3600
        hour = "FLOOR(finished_at / 3600)" if self.dialect == "postgres" else "CAST(finished_at / 3600 AS INTEGER)"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {hour} * 3600 AS hour, COUNT(*), COALESCE(SUM(source_size), 0),"
                " COALESCE(SUM(output_size), 0) FROM jobs WHERE status = 'completed' AND finished_at >= ?"
                " GROUP BY hour ORDER BY hour", (since,)).fetchall()
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def counts_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = {s.value: 0 for s in JobStatus}
        counts.update({status: n for status, n in rows})
        return counts

    def claim_next(self, worker_id: str, lease_seconds: float, now: float | None = None,
                   max_source_size: int | None = None) -> Job | None:
        """Atomically give the claimable pending job of highest priority (the oldest among equals) to ``worker_id``;
        None when there is none, or while the queue or this worker is paused (checked in the same statement).

        With ``max_source_size``, only jobs whose source fits (the worker's cache room) are considered.
        """
        now = time.time() if now is None else now
        rows = self._move(Transition.CLAIM, *self._claim_where(now, max_source_size), now=now,
                          **self._claim_assignments(worker_id, now + lease_seconds))
        return rows[0] if rows else None

    def check_in_and_claim(self, worker_id: str, lease_seconds: float, *, cache_free_bytes: int | None = None,
                           max_source_size: int | None = None,
                           now: float | None = None) -> tuple[float | None, Job | None]:
        """``check_in``, then ``claim_next`` unless the worker is quarantined: (when its quarantine ends or None, the
        job claimed or None). On PostgreSQL one statement: a claim costs one round trip and one commit, not two."""
        now = time.time() if now is None else now
        if self.dialect != "postgres":
            with self._lock:
                quarantined = self.check_in(worker_id, cache_free_bytes, now=now)
                if quarantined is not None:
                    return quarantined, None
                return None, self.claim_next(worker_id, lease_seconds, now=now, max_source_size=max_source_size)
        # the check-in's RETURNING read by the claim: a quarantined worker's claim reads no job
        where, params = self._claim_where(now, max_source_size,
                                          also="NOT EXISTS (SELECT 1 FROM seen WHERE quarantined_until > :now)")
        update, _condition, named = self._move_statement(Transition.CLAIM, where, params, now=now,
                                                         **self._claim_assignments(worker_id, now + lease_seconds))
        named["room"] = cache_free_bytes
        with self._lock:
            row = self._db.execute(
                "WITH seen AS (UPDATE workers SET last_seen_at = :now, cache_free_bytes = COALESCE(:room,"
                " cache_free_bytes) WHERE id = :worker RETURNING quarantined_until),"
                f" claimed AS ({update}) SELECT (SELECT quarantined_until FROM seen) AS checked_in_quarantined_until,"
                " claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true", named).fetchone()
        quarantined = row["checked_in_quarantined_until"]
        job = Job.from_row(row) if row["id"] is not None else None
        return (quarantined if quarantined is not None and quarantined > now else None), job

    def _claim_where(self, now: float, max_source_size: int | None, also: str = "") -> tuple[str, tuple[Any, ...]]:
        """Which job a claim takes (``claim_next``) and its parameters; ``:worker`` is the claiming worker, ``also``
        one more condition of claims being open (uncorrelated: evaluated once, before the index is read)."""
        size_limit = max_source_size if max_source_size is not None else 2**62
        # PostgreSQL: rows another master is claiming right now are skipped, not waited for (and not lost: a
        # plain subquery would pick the same row, whose UPDATE then matches nothing once the other commits)
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgres" else ""
        # 'pending' written out, not a parameter: a prepared statement's generic plan cannot use the partial
        # index of pending jobs for a parameter (measured: 17 ms a claim at 20,000 jobs instead of 0.3)
        claims_open = f"{_CLAIMS_OPEN} AND {also}" if also else _CLAIMS_OPEN
        return (f"rowid = (SELECT rowid FROM jobs WHERE status = '{JobStatus.PENDING.value}' AND not_before <= ?"
                f" AND source_size <= ? AND {claims_open} ORDER BY priority DESC, rowid LIMIT 1{skip_locked})",
                (now, size_limit))

    @staticmethod
    def _claim_assignments(worker_id: str, lease_until: float) -> dict[str, Any]:
        return {"set_sql": "worker_id = :worker, lease_expires_at = :lease, attempts = attempts + 1,"
                           " claimed_at = :now, progress = 0, error = NULL, waiting = NULL, health = NULL",
                "set_params": {"worker": worker_id, "lease": lease_until}}

    def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt of the job that ended, first to last (``JobNotFound`` for an unknown job)."""
        self.get_job(job_id)
        with self._lock:
            rows = self._db.execute(f"SELECT {_ATTEMPT_COLUMNS} FROM job_attempts WHERE job_id = ?"
                                    " ORDER BY claimed_at", (job_id,)).fetchall()
        return [{name: row[name] for name in row.keys() if name != "job_id"} for row in rows]

    def set_priority(self, job_id: str, priority: int, now: float | None = None) -> Job:
        """A pending job's new priority; a job no longer pending keeps its own (``JobNotPending``)."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("UPDATE jobs SET priority = ?, updated_at = ? WHERE id = ? AND status = 'pending'"
                                   " RETURNING *", (priority, now, job_id)).fetchone()
        if row is None:
            raise JobNotPending(self.get_job(job_id))
        return Job.from_row(row)

    def transition(self, job_id: str, transition: Transition, *, worker_id: str | None = None,
                   now: float | None = None, guard: str = "", set_sql: str = "", **set_params: Any) -> Job:
        """Apply ``transition`` to one job; with ``worker_id``, only if that worker holds the lease.

        ``guard`` is an extra SQL condition; when it does not hold,
        ``GuardFailed`` is raised so callers can choose another transition.
        """
        now = time.time() if now is None else now
        where, params = "id = ?", [job_id]
        if worker_id is not None:
            where += " AND worker_id = ?"
            params.append(worker_id)
        rows = self._move(transition, where, params, now=now, guard=guard, set_sql=set_sql, set_params=set_params)
        if rows:
            return rows[0]
        job = self.get_job(job_id)
        if job.status not in transition.sources:
            raise InvalidTransition(job, transition)
        if worker_id is not None and job.worker_id != worker_id:
            raise NotOwner(job, worker_id)
        raise GuardFailed(job, guard)

    def complete(self, job_id: str, output_size: int, output_sha256: str, *, worker_id: str | None = None,
                 now: float | None = None, kept_source: str | None = None) -> Job:
        """``kept_source``: why the output is the source's bytes (the conversion came out larger)."""
        return self.transition(
            job_id, Transition.COMPLETE, worker_id=worker_id, now=now,
            set_sql="output_size = :size, output_sha256 = :sha, finished_at = :now, lease_expires_at = NULL,"
                    " progress = 100, error = NULL, kept_source = :kept, reason = :reason",
            size=output_size, sha=output_sha256, kept=1 if kept_source else 0, reason=kept_source,
        )

    def complete_job(self, job_id: str, output_size: int, output_sha256: str, *, worker_id: str | None = None,
                     upload_id: str | None = None, now: float | None = None, kept_source: str | None = None) -> Job:
        """In one transaction: the job completed, its worker's run of failures ended, the upload that
        brought the output (``upload_id``) forgotten. Either all of it happens or none."""
        with self._transaction():
            job = self.complete(job_id, output_size, output_sha256, worker_id=worker_id, now=now,
                                kept_source=kept_source)
            if job.worker_id is not None:
                self._db.execute("UPDATE workers SET consecutive_failures = 0 WHERE id = ?", (job.worker_id,))
            if upload_id is not None:
                self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            self._db.execute("DELETE FROM bucket_uploads WHERE job_id = ?", (job_id,))
        return job

    def complete_health_check(self, job_id: str, health: dict[str, Any], *, worker_id: str,
                              now: float | None = None) -> Job:
        """A health check's end: the job completed with its ``health`` (healthy or not: a corrupt source is a
        result, not a failure), no output, its worker's run of failures ended; ``GuardFailed`` for a job that
        has an output path (a conversion)."""
        with self._transaction():
            job = self.transition(job_id, Transition.COMPLETE, worker_id=worker_id, now=now, guard="output_path = ''",
                                  set_sql="health = :health, finished_at = :now, lease_expires_at = NULL,"
                                          " progress = 100, error = NULL", health=json.dumps(health))
            self._db.execute("UPDATE workers SET consecutive_failures = 0 WHERE id = ?", (worker_id,))
        return job

    def update_source_digest(self, job_id: str, *, size: int, sha256: str, mtime_ns: int) -> None:
        """Remember the digest of a source that changed on disk since it was last hashed."""
        with self._lock:
            self._db.execute("UPDATE jobs SET source_size = ?, source_sha256 = ?, source_mtime_ns = ? WHERE id = ?",
                             (size, sha256, mtime_ns, job_id))

    def fail(self, job_id: str, *, worker_id: str | None, error: str, retryable: bool, retry_delay: float,
             now: float | None = None) -> Job:
        """Record a failed attempt: back to pending while attempts remain and the error is retryable."""
        now = time.time() if now is None else now
        if retryable:
            try:
                return self.transition(
                    job_id, Transition.REQUEUE, worker_id=worker_id, now=now,
                    set_sql="error = :error, not_before = :not_before, lease_expires_at = NULL, worker_id = NULL",
                    guard="attempts < max_attempts", error=error, not_before=now + retry_delay,
                )
            except GuardFailed:
                pass  # attempts used up: the job fails for good
        return self.transition(
            job_id, Transition.FAIL, worker_id=worker_id, now=now,
            set_sql="error = :error, finished_at = :now, lease_expires_at = NULL", error=error,
        )

    def skip(self, job_id: str, *, worker_id: str | None, reason: str, now: float | None = None) -> Job:
        """The source already matches the job's profile (its skip rule): the job ends skipped, nothing written."""
        return self.transition(job_id, Transition.SKIP, worker_id=worker_id, now=now,
                               set_sql="reason = :reason, finished_at = :now, lease_expires_at = NULL, error = NULL",
                               reason=reason)

    def release(self, job_id: str, *, worker_id: str, reason: str, now: float | None = None) -> Job:
        """The worker gives a job back unfinished (shutdown): pending again, the attempt not counted."""
        return self.transition(
            job_id, Transition.REQUEUE, worker_id=worker_id, now=now,
            set_sql="attempts = MAX(attempts - 1, 0), error = :error, lease_expires_at = NULL, worker_id = NULL,"
                    " not_before = 0",
            error=reason,
        )

    def cancel(self, job_id: str, now: float | None = None) -> Job:
        return self.transition(job_id, Transition.CANCEL, now=now,
                               set_sql="finished_at = :now, lease_expires_at = NULL")

    def retry(self, job_id: str, now: float | None = None) -> Job:
        return self.transition(
            job_id, Transition.RETRY, now=now,
            set_sql="attempts = 0, error = NULL, not_before = 0, finished_at = NULL, worker_id = NULL, progress = NULL,"
                    " reason = NULL",
        )

    def heartbeat(self, job_id: str, *, worker_id: str, progress: float | None, lease_seconds: float,
                  conversion: dict[str, Any] | None = None, now: float | None = None) -> Job:
        """Renew the lease of a processing job held by ``worker_id`` (no change of status).

        ``conversion`` (seconds, accel, speed, vulkan_fallback) records how the conversion went.
        """
        now = time.time() if now is None else now
        conversion = conversion or {}
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET lease_expires_at = ?, progress = COALESCE(?, progress), updated_at = ?,"
                " conversion_seconds = COALESCE(?, conversion_seconds), accel = COALESCE(?, accel),"
                " speed = COALESCE(?, speed), vulkan_fallback = COALESCE(?, vulkan_fallback)"
                " WHERE id = ? AND status = ? AND worker_id = ? RETURNING *",
                (now + lease_seconds, progress, now, conversion.get("conversion_seconds"), conversion.get("accel"),
                 conversion.get("speed"), conversion.get("vulkan_fallback"), job_id, JobStatus.PROCESSING.value,
                 worker_id),
            ).fetchone()
            self._touch_worker(worker_id, now)
        if row is not None:
            return Job.from_row(row)
        job = self.get_job(job_id)
        if job.status is not JobStatus.PROCESSING:
            raise InvalidTransition(job, Transition.COMPLETE)
        raise NotOwner(job, worker_id)

    def requeue_expired(self, now: float | None = None) -> list[Job]:
        """Jobs whose lease ran out go back to pending, or to failed once their attempts are used up."""
        now = time.time() if now is None else now
        expired = "status = ? AND lease_expires_at < ?"
        params = (JobStatus.PROCESSING.value, now)
        requeued = self._move(Transition.REQUEUE, expired + " AND attempts < max_attempts", params, now=now,
                              set_sql="error = 'lease expired', lease_expires_at = NULL, worker_id = NULL")
        failed = self._move(Transition.FAIL, expired, params, now=now,
                            set_sql="error = 'lease expired; no attempts left', lease_expires_at = NULL,"
                                    " finished_at = :now")
        return requeued + failed

    def _move(self, transition: Transition, where: str, params: Iterable[Any], *, now: float, guard: str = "",
              set_sql: str = "", set_params: dict[str, Any] | None = None) -> list[Job]:
        """The one statement that changes job status: the old state is checked in the same UPDATE."""
        sql, condition, named = self._move_statement(transition, where, params, now=now, guard=guard,
                                                     set_sql=set_sql, set_params=set_params)
        with self._lock:
            try:
                rows = self._db.execute(sql, named).fetchall()
                if transition.target is JobStatus.PENDING:
                    self._notify_claimable([row["id"] for row in rows])
            except self._db.IntegrityError as exc:
                if not _is_output_owner_violation(exc):
                    raise
                if self._db.in_transaction and self.dialect == "postgres":  # the transaction is spoilt: no SELECT
                    raise OutputBusy("(its output)", "another job") from exc
                output = self._db.execute(f"SELECT output_path FROM jobs WHERE {condition}", named).fetchone()
                raise self._output_busy(output[0] if output else "?") from exc
        return [Job.from_row(r) for r in rows]

    @staticmethod
    def _move_statement(transition: Transition, where: str, params: Iterable[Any], *, now: float, guard: str = "",
                        set_sql: str = "", set_params: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any]]:
        """``_move``'s guarded ``UPDATE ... RETURNING *``, its WHERE condition and its named parameters."""
        assignments = "status = :target, updated_at = :now" + (f", {set_sql}" if set_sql else "")
        named = {"target": transition.target.value, "now": now, **(set_params or {})}
        sources = [s.value for s in transition.sources]
        clause = f"({where}) AND status IN ({', '.join(':src%d' % i for i in range(len(sources)))})"
        named.update({f"src{i}": s for i, s in enumerate(sources)})
        if guard:
            clause += f" AND ({guard})"
        condition = _name_positional(clause, list(params), named)
        return f"UPDATE jobs SET {assignments} WHERE {condition} RETURNING *", condition, named

    # -- resumable uploads ----------------------------------------------------------------------

    def create_upload(self, *, upload_id: str, job_id: str, worker_id: str | None, length: int, temp_path: str,
                      sha256: str | None, expires_at: float, kind: str = "output", attempt: int | None = None,
                      profile: str | None = None, output_path: str | None = None, filename: str | None = None,
                      bucket_upload_id: str | None = None, priority: int | None = None,
                      now: float | None = None) -> tuple[Upload, list[Upload]]:
        """Record a new upload for a job (or, kind ``source``, for the job it will create); returns it and the
        uploads it replaces: those of an earlier attempt of the same job, whose writer no longer holds the lease.

        An upload still live for the same job (same attempt, or any source upload naming that job id) is never
        replaced: ``DuplicateUpload``. A source upload naming an output another source upload or an active job
        will write is ``OutputBusy``.
        """
        now = time.time() if now is None else now
        with self._transaction():
            live = self._db.execute("SELECT * FROM uploads WHERE job_id = ? AND (kind = 'source' OR attempt IS ?)",
                                    (job_id, attempt)).fetchone()
            if live is not None:
                raise DuplicateUpload(Upload(**dict(live)))
            if output_path is not None:
                self._check_output_free(output_path)
            stale = self._db.execute("DELETE FROM uploads WHERE job_id = ? RETURNING *", (job_id,)).fetchall()
            row = self._db.execute(
                "INSERT INTO uploads (id, job_id, worker_id, length, \"offset\", temp_path, sha256, created_at, kind,"
                " profile, output_path, filename, attempt, expires_at, bucket_upload_id, priority)"
                " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (upload_id, job_id, worker_id, length, temp_path, sha256, now, kind, profile, output_path,
                 filename, attempt, expires_at, bucket_upload_id, priority)).fetchone()
        return Upload(**dict(row)), [Upload(**dict(r)) for r in stale]

    def _check_output_free(self, output_path: str) -> None:
        busy = self._db.execute(
            f"SELECT id FROM jobs WHERE output_path = ? AND status IN ({_marks(ACTIVE)})"
            " UNION ALL SELECT job_id FROM uploads WHERE kind = 'source' AND output_path = ?",
            (output_path, *_values(ACTIVE), output_path)).fetchone()
        if busy:
            raise OutputBusy(output_path, busy[0])

    def get_upload(self, upload_id: str) -> Upload:
        with self._lock:
            row = self._db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if row is None:
            raise UploadNotFound(upload_id)
        return Upload(**dict(row))

    def set_upload_offset(self, upload_id: str, offset: int, expires_at: float | None = None) -> None:
        """Where the upload's bytes end now; each PATCH that stores bytes also pushes its expiry back."""
        with self._lock:
            self._db.execute("UPDATE uploads SET \"offset\" = ?, expires_at = COALESCE(?, expires_at) WHERE id = ?",
                             (offset, expires_at, upload_id))

    def delete_expired_uploads(self, now: float | None = None) -> list[Upload]:
        """Forget uploads not continued before their expiry (tus expiration); the caller removes their files."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("DELETE FROM uploads WHERE expires_at < ? RETURNING *", (now,)).fetchall()
        return [Upload(**dict(r)) for r in rows]

    def delete_upload(self, upload_id: str) -> Upload | None:
        with self._lock:
            row = self._db.execute("DELETE FROM uploads WHERE id = ? RETURNING *", (upload_id,)).fetchone()
        return None if row is None else Upload(**dict(row))

    def delete_orphan_uploads(self) -> list[Upload]:
        """Forget uploads whose job is no longer processing (finished, cancelled, re-queued)."""
        with self._lock:
            rows = self._db.execute(
                "DELETE FROM uploads WHERE kind = 'output' AND job_id NOT IN (SELECT id FROM jobs WHERE status = ?)"
                " RETURNING *",
                (JobStatus.PROCESSING.value,)).fetchall()
        return [Upload(**dict(r)) for r in rows]

    # -- output uploads to a bucket ------------------------------------------------------------------

    def record_bucket_upload(self, job_id: str, worker_id: str, *, upload_id: str, size: int, sha256: str,
                             now: float | None = None) -> bool:
        """Remember the multipart upload of the job's current attempt, only while the job is processing on
        ``worker_id``; False (nothing recorded) otherwise."""
        now = time.time() if now is None else now
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO bucket_uploads (job_id, attempt, upload_id, size, sha256, created_at)"
                " SELECT id, attempts, ?, ?, ?, ? FROM jobs WHERE id = ? AND status = 'processing'"
                " AND worker_id = ? ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt,"
                " upload_id = excluded.upload_id, size = excluded.size, sha256 = excluded.sha256,"
                " created_at = excluded.created_at", (upload_id, size, sha256, now, job_id, worker_id))
            return cursor.rowcount == 1

    def bucket_upload(self, job_id: str) -> BucketUpload | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM bucket_uploads WHERE job_id = ?", (job_id,)).fetchone()
        return BucketUpload(**dict(row)) if row else None

    def live_bucket_uploads(self) -> set[str]:
        """S3 upload ids still in use: of attempts running (their job processing that attempt), and of sources
        being sent that have not expired."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.upload_id FROM bucket_uploads b JOIN jobs j ON j.id = b.job_id"
                " WHERE j.status = 'processing' AND j.attempts = b.attempt"
                " UNION SELECT bucket_upload_id FROM uploads WHERE bucket_upload_id IS NOT NULL").fetchall()
        return {row[0] for row in rows}

    def forget_bucket_uploads(self, upload_ids: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM bucket_uploads WHERE upload_id = ?", [(u,) for u in upload_ids])

    def list_uploads(self) -> list[Upload]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM uploads").fetchall()
        return [Upload(**dict(r)) for r in rows]

    # -- workers ------------------------------------------------------------------------------

    def register_worker(self, *, worker_id: str, hostname: str, capabilities: dict[str, Any], concurrency: int,
                        schedule: dict[str, Any] | None = None, now: float | None = None) -> Worker:
        """Insert or refresh a worker; an operator's pause (``paused_at``) outlives its registrations."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "INSERT INTO workers (id, hostname, capabilities, concurrency, registered_at, last_seen_at, schedule)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,"
                " capabilities = excluded.capabilities, concurrency = excluded.concurrency,"
                " last_seen_at = excluded.last_seen_at, schedule = excluded.schedule RETURNING *",
                (worker_id, hostname, json.dumps(capabilities), concurrency, now, now,
                 json.dumps(schedule) if schedule is not None else None),
            ).fetchone()
        return _worker(row)

    def get_worker(self, worker_id: str) -> Worker:
        with self._lock:
            row = self._db.execute("SELECT * FROM workers WHERE id = ?", (worker_id,)).fetchone()
        if row is None:
            raise WorkerNotFound(worker_id)
        return _worker(row)

    def pause_worker(self, worker_id: str, now: float | None = None) -> Worker:
        """From now on the worker's claims get nothing (its running jobs go on); pausing twice keeps the first time."""
        now = time.time() if now is None else now
        return self._update_worker(worker_id, "paused_at = COALESCE(paused_at, ?)", (now,))

    def resume_worker(self, worker_id: str) -> Worker:
        worker = self._update_worker(worker_id, "paused_at = NULL", ())
        self._notify_claimable(["resumed"])
        return worker

    def _update_worker(self, worker_id: str, assignments: str, params: tuple[Any, ...]) -> Worker:
        with self._lock:
            row = self._db.execute(f"UPDATE workers SET {assignments} WHERE id = ? RETURNING *",
                                   (*params, worker_id)).fetchone()
        if row is None:
            raise WorkerNotFound(worker_id)
        return _worker(row)

    # -- the whole queue ---------------------------------------------------------------------------

    def pause_queue(self, now: float | None = None) -> float:
        """No claim gets a job until ``resume_queue`` (running jobs go on); when the pause began."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("INSERT INTO queue_pause (id, paused_at) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                             (now,))
        return self.queue_paused_at() or now

    def resume_queue(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM queue_pause")
            self._notify_claimable(["resumed"])

    def queue_paused_at(self) -> float | None:
        """When the queue was paused, or None while it is not."""
        with self._lock:
            row = self._db.execute("SELECT paused_at FROM queue_pause").fetchone()
        return None if row is None else row[0]

    def claims_paused(self, worker_id: str) -> str | None:
        """Why claims of ``worker_id`` get nothing whatever is pending: "queue", "worker", or None."""
        with self._lock:
            row = self._db.execute("SELECT (SELECT COUNT(*) FROM queue_pause), (SELECT COUNT(*) FROM workers"
                                   " WHERE id = ? AND paused_at IS NOT NULL)", (worker_id,)).fetchone()
        return "queue" if row[0] else "worker" if row[1] else None

    # -- space saved ----------------------------------------------------------------------------------

    def space_saved(self, days: int, now: float | None = None) -> dict[str, Any]:
        """Completed jobs' source and output bytes and their difference: in total, by profile, by worker, and by
        day (UTC, the day each finished) for the last ``days`` days."""
        now = time.time() if now is None else now
        sums = "COUNT(*), COALESCE(SUM(source_size), 0), COALESCE(SUM(output_size), 0)"
        completed = "status = 'completed' AND output_size IS NOT NULL"
        day = ("to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')" if self.dialect == "postgres"
               else "date(finished_at, 'unixepoch')")
        since = (int(now // 86400) - days + 1) * 86400
        with self._lock:
            total = self._db.execute(f"SELECT {sums} FROM jobs WHERE {completed}").fetchone()
            groups = {name: self._db.execute(f"SELECT {key}, {sums} FROM jobs WHERE {completed}{extra}"
                                             f" GROUP BY {key} ORDER BY {key}", params).fetchall()
                      for name, key, extra, params in (
                          ("by_profile", "profile", "", ()),
                          ("by_worker", "worker_id", "", ()),
                          ("by_day", day, " AND finished_at >= ?", (since,)))}
        label = {"by_profile": "profile", "by_worker": "worker_id", "by_day": "day"}
        result: dict[str, Any] = {"totals": _space(*total)}
        for name, rows in groups.items():
            result[name] = [{label[name]: row[0], **_space(*row[1:])} for row in rows]
        return result

    def list_workers(self) -> list[Worker]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM workers ORDER BY id").fetchall()
        return [_worker(r) for r in rows]

    def jobs_of_worker(self, worker_id: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE worker_id = ? AND status = ?",
                                    (worker_id, JobStatus.PROCESSING.value)).fetchall()
        return [r["id"] for r in rows]

    def record_worker_outcome(self, worker_id: str, *, failed: bool, threshold: int, quarantine_seconds: float,
                              now: float | None = None) -> Worker | None:
        """Count consecutive failures of a worker; at ``threshold`` it is quarantined (circuit breaker)."""
        now = time.time() if now is None else now
        with self._lock:
            if failed:
                row = self._db.execute(
                    "UPDATE workers SET consecutive_failures = consecutive_failures + 1,"
                    " quarantined_until = CASE WHEN consecutive_failures + 1 >= ? THEN ? ELSE quarantined_until END"
                    " WHERE id = ? RETURNING *", (threshold, now + quarantine_seconds, worker_id)).fetchone()
            else:
                row = self._db.execute(
                    "UPDATE workers SET consecutive_failures = 0 WHERE id = ? RETURNING *", (worker_id,)).fetchone()
        return None if row is None else _worker(row)

    def check_in(self, worker_id: str, cache_free_bytes: int | None = None, now: float | None = None) -> float | None:
        """A worker asks for work: it is seen now, with the room its cache has (when it says); when its quarantine
        ends, or None if it is not quarantined. One statement (claims use ``check_in_and_claim``)."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("UPDATE workers SET last_seen_at = ?, cache_free_bytes ="
                                   " COALESCE(?, cache_free_bytes) WHERE id = ? RETURNING quarantined_until",
                                   (now, cache_free_bytes, worker_id)).fetchone()
        return row[0] if row is not None and row[0] is not None and row[0] > now else None

    def _touch_worker(self, worker_id: str, now: float, cache_free_bytes: int | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE workers SET last_seen_at = ?, cache_free_bytes = COALESCE(?, cache_free_bytes)"
                             " WHERE id = ?", (now, cache_free_bytes, worker_id))

    def explain_waiting(self, online_since: float) -> None:
        """Say in each pending job that no online worker can hold it, when that is why it waits (and stop
        saying it once one can). A job needs room for its source and an output of about the same size."""
        with self._transaction():
            largest = self._db.execute("SELECT MAX(cache_free_bytes) FROM workers WHERE last_seen_at >= ?",
                                       (online_since,)).fetchone()[0]
            if largest is None:
                return
            self._db.execute("UPDATE jobs SET waiting = NULL WHERE status = ? AND waiting IS NOT NULL"
                             " AND source_size * 2 <= ?", (JobStatus.PENDING.value, largest))
            too_big = self._db.execute("SELECT id, source_size FROM jobs WHERE status = ? AND source_size * 2 > ?",
                                       (JobStatus.PENDING.value, largest)).fetchall()
            for job_id, size in too_big:
                reason = f"no worker has room: needs {_human_size(size * 2)}, largest cache {_human_size(largest)}"
                self._db.execute("UPDATE jobs SET waiting = ? WHERE id = ?", (reason, job_id))

    def extend_live_leases(self, until: float) -> int:
        """At start-up: leases that were live when the master stopped last until ``until`` at least, so their
        workers can renew them before the reaper would requeue their jobs. Returns how many."""
        with self._lock:
            return self._db.execute("UPDATE jobs SET lease_expires_at = MAX(lease_expires_at, ?) WHERE status = ?",
                                    (until, JobStatus.PROCESSING.value)).rowcount

    # -- webhooks' outbox ------------------------------------------------------------------------------

    def webhook_events_to_fan_out(self, limit: int = 100) -> list[dict[str, Any]]:
        """Events no master has turned into deliveries yet, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM webhook_events WHERE fanned_out = 0 ORDER BY created_at LIMIT ?",
                                    (limit,)).fetchall()
        return [dict(row) for row in rows]

    def fan_out_webhook_event(self, event_id: str, deliveries: list[tuple[str, str, str, str]], *, event_type: str,
                              job_id: str | None, worker_id: str | None, now: float | None = None) -> bool:
        """In one transaction: the event marked fanned out (guarded: by one master only) and its deliveries
        (id, subscription, url, body) written, pending; False when another master did it first."""
        now = time.time() if now is None else now
        with self._transaction():
            if self._db.execute("UPDATE webhook_events SET fanned_out = 1 WHERE id = ? AND fanned_out = 0",
                                (event_id,)).rowcount != 1:
                return False
            self._db.executemany(
                "INSERT INTO webhook_deliveries (id, event_id, event_type, job_id, worker_id, subscription, url, body,"
                " status, attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                " 'pending', 0, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(delivery_id, event_id, event_type, job_id, worker_id, subscription, url, body, now, now, now)
                 for delivery_id, subscription, url, body in deliveries])
        return True

    def note_lost_workers(self, online_since: float, horizon: float, now: float | None = None) -> int:
        """A ``worker.lost`` event for each worker last seen before ``online_since`` (and after ``horizon``: one gone
        longer was gone before anyone watched), once per disappearance (its last_seen_at is the event's ref)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._db.execute(
                f"INSERT INTO webhook_events (id, type, worker_id, ref, created_at) SELECT {_UUID_SQL[self.dialect]},"
                " 'worker.lost', id, last_seen_at, ? FROM workers WHERE last_seen_at < ? AND last_seen_at >= ?"
                " ON CONFLICT DO NOTHING", (now, online_since, horizon)).rowcount

    def note_queue_drained(self, now: float | None = None) -> bool:
        """A ``queue.drained`` event when no job is pending or processing and a job ended since the last one
        (its ref: the time of the latest job event, so two masters write it once)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._db.execute(
                f"INSERT INTO webhook_events (id, type, ref, created_at) SELECT {_UUID_SQL[self.dialect]},"
                " 'queue.drained', last, ? FROM (SELECT MAX(created_at) AS last FROM webhook_events"
                " WHERE job_id IS NOT NULL) AS latest WHERE last IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE status IN ('pending', 'processing'))"
                " AND last > COALESCE((SELECT MAX(ref) FROM webhook_events WHERE type = 'queue.drained'), 0)"
                " ON CONFLICT DO NOTHING", (now,)).rowcount == 1

    def claim_webhook_deliveries(self, claimer: str, lease: float, limit: int,
                                 now: float | None = None) -> list[dict[str, Any]]:
        """Deliveries due (pending and due, or sending by a master whose claim ran out) become ``sending``,
        claimed by ``claimer`` until now + ``lease``, their attempt counted; one guarded UPDATE, rows another
        master is claiming skipped (PostgreSQL), so no delivery is sent by two masters at once."""
        now = time.time() if now is None else now
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgres" else ""
        due = ("(status = 'pending' AND next_attempt_at <= :now) OR (status = 'sending' AND claim_expires_at < :now)")
        with self._lock:
            rows = self._db.execute(
                "UPDATE webhook_deliveries SET status = 'sending', claimed_by = :me, claim_expires_at = :until,"
                " attempts = attempts + 1, updated_at = :now WHERE id IN (SELECT id FROM webhook_deliveries"
                f" WHERE {due} ORDER BY next_attempt_at LIMIT :limit{skip_locked}) AND ({due}) RETURNING *",
                {"me": claimer, "until": now + lease, "now": now, "limit": limit}).fetchall()
        return [dict(row) for row in rows]

    def webhook_delivered(self, delivery_id: str, claimer: str, attempt: int, status_code: int,
                          now: float | None = None) -> bool:
        """Mark a delivery delivered, only while ``claimer`` holds that attempt of it: once, whatever races."""
        now = time.time() if now is None else now
        with self._lock:
            return self._db.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = ?, updated_at = ?, last_status = ?,"
                " last_error = NULL, claimed_by = NULL, claim_expires_at = NULL"
                " WHERE id = ? AND status = 'sending' AND claimed_by = ? AND attempts = ?",
                (now, now, status_code, delivery_id, claimer, attempt)).rowcount == 1

    def webhook_attempt_failed(self, delivery_id: str, claimer: str, attempt: int, *, error: str,
                               status_code: int | None, retry_at: float | None, now: float | None = None) -> bool:
        """An attempt that did not deliver: pending again until ``retry_at``, or ``failed`` for good (None)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._db.execute(
                "UPDATE webhook_deliveries SET status = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                " updated_at = ?, last_error = ?, last_status = ?, claimed_by = NULL, claim_expires_at = NULL"
                " WHERE id = ? AND status = 'sending' AND claimed_by = ? AND attempts = ?",
                ("pending" if retry_at is not None else "failed", retry_at, now, error[:500], status_code,
                 delivery_id, claimer, attempt)).rowcount == 1

    def list_webhook_deliveries(self, *, status: str | None = None, event_type: str | None = None,
                                limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Deliveries, newest first (without their bodies), and how many match."""
        clauses, params = [], []
        for column, value in (("status", status), ("event_type", event_type)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM webhook_deliveries {where}", params).fetchone()[0]
            rows = self._db.execute(f"SELECT {_WEBHOOK_DELIVERY_COLUMNS} FROM webhook_deliveries {where}"
                                    " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                                    (*params, limit, offset)).fetchall()
        return [dict(row) for row in rows], int(total)

    def webhook_delivery_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status").fetchall()
        counts = {status: 0 for status in ("pending", "sending", "delivered", "failed")}
        counts.update({status: int(n) for status, n in rows})
        return counts

    def prune_webhooks(self, before: float) -> int:
        """Forget events fanned out and deliveries that ended, made before ``before``; how many deliveries."""
        with self._transaction():
            gone = self._db.execute("DELETE FROM webhook_deliveries WHERE created_at < ?"
                                    " AND status IN ('delivered', 'failed')", (before,)).rowcount
            self._db.execute("DELETE FROM webhook_events WHERE created_at < ? AND fanned_out = 1", (before,))
        return gone


def _worker(row: sqlite3.Row) -> Worker:
    values = dict(row)
    values["capabilities"] = json.loads(values["capabilities"])
    values["schedule"] = json.loads(values["schedule"]) if values.get("schedule") else None
    return Worker(**values)


def _space(jobs: int, source: Any, output: Any) -> dict[str, int]:
    source, output = int(source), int(output)  # PostgreSQL sums BIGINTs as NUMERIC
    return {"jobs": int(jobs), "source_bytes": source, "output_bytes": output, "saved_bytes": source - output}


def _human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.0f} {unit}"
    return f"{size} B"


def _is_output_owner_violation(exc: Exception) -> bool:
    return "jobs.output_path" in str(exc) or "jobs_one_owner_per_output" in str(exc)


def postgres_schema(sql: str) -> str:
    """``SCHEMA`` (SQLite's types) for PostgreSQL: 64-bit integers, double floats, and ``seq``, the insertion
    order SQLite keeps in ``rowid``."""
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return sql.replace("CREATE TABLE IF NOT EXISTS jobs (",
                       "CREATE TABLE IF NOT EXISTS jobs (\n    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,")


def _marks(items: Iterable[Any]) -> str:
    return ", ".join("?" for _ in items)


def _values(states: Iterable[JobStatus]) -> tuple[str, ...]:
    return tuple(s.value for s in states)


def _name_positional(clause: str, positional: list[Any], named: dict[str, Any]) -> str:
    """Rewrite ``?`` placeholders as named ones so one statement can mix both kinds of parameters."""
    parts = clause.split("?")
    if len(parts) - 1 != len(positional):
        raise ValueError("placeholder count does not match parameters")
    out = [parts[0]]
    for i, (value, rest) in enumerate(zip(positional, parts[1:])):
        named[f"p{i}"] = value
        out.append(f":p{i}{rest}")
    return "".join(out)
