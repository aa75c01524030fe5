"""``converter-master migrate-db``: a SQLite queue copied into an empty PostgreSQL database, then served from there.

The command runs as a real process (the console script). The source is a real SQLite store with jobs in every
state, registered workers and uploads in progress; the target a fresh database of the session's PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from master.store import JobStore
from tests.fixtures import VENV_BIN
from tests.postgres import PASSWORD, USER

pytestmark = pytest.mark.integration

T = 1_700_000_000.0


def migrate_db(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "converter-master"), "migrate-db", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line a refused migration prints; it must also exit non-zero and print nothing else."""
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def add_job(store: JobStore, i: int):
    return store.create_job(job_id=f"job-{i}", source_path=f"in/{i}.mkv", output_path=f"out/{i}.mp4",
                            profile="h264-720p", source_size=1000 + i, source_sha256=f"{i:064x}",
                            source_mtime_ns=10**18 + i, max_attempts=3, now=T + i)


def fill(store: JobStore) -> None:
    """Jobs in every state, with the history columns set: completed, failed, pending after a retryable failure,
    cancelled, processing (with an output upload and a bucket upload), pending, and retried after failing."""
    for i in range(8):
        add_job(store, i)
    store.register_worker(worker_id="w1", hostname="box-1", capabilities={"encoders": ["libx264"]}, concurrency=2,
                          now=T)
    store.register_worker(worker_id="w2", hostname="box-2", capabilities={"accel": "vaapi"}, concurrency=1, now=T)
    assert store.claim_next("w1", 60, now=T + 100).id == "job-0"
    store.heartbeat("job-0", worker_id="w1", progress=50.0, lease_seconds=60, now=T + 110,
                    conversion={"conversion_seconds": 12.5, "accel": "none", "speed": 1.75})
    store.complete_job("job-0", 4321, "ab" * 32, worker_id="w1", now=T + 120)
    assert store.claim_next("w2", 60, now=T + 130).id == "job-1"
    store.fail("job-1", worker_id="w2", error="ffmpeg exited 1", retryable=False, retry_delay=10, now=T + 140)
    assert store.claim_next("w1", 60, now=T + 150).id == "job-2"
    store.fail("job-2", worker_id="w1", error="download timed out", retryable=True, retry_delay=600,
               now=T + 160)
    store.cancel("job-3", now=T + 170)
    assert store.claim_next("w2", 600, now=T + 180).id == "job-4"
    store.create_upload(upload_id="up-out", job_id="job-4", worker_id="w2", length=5000, temp_path=".uploads/up-out",
                        sha256="cd" * 32, expires_at=T + 3600, attempt=1, now=T + 190)
    store.set_upload_offset("up-out", 2048)
    assert store.record_bucket_upload("job-4", "w2", upload_id="s3-upload-1", size=5000, sha256="cd" * 32,
                                      now=T + 195)
    store.create_upload(upload_id="up-src", job_id="job-new", worker_id=None, length=9000, kind="source",
                        temp_path=".uploads/up-src", sha256=None, expires_at=T + 7200, profile="h264-720p",
                        output_path="out/new.mp4", filename="new.mkv", now=T + 200)
    assert store.claim_next("w1", 60, now=T + 210).id == "job-5"
    store.fail("job-5", worker_id="w1", error="bad source", retryable=False, retry_delay=10, now=T + 220)
    store.retry("job-5", now=T + 230)
    store.record_worker_outcome("w1", failed=True, threshold=5, quarantine_seconds=600, now=T + 240)


@pytest.fixture
def sqlite_queue(tmp_path) -> Path:
    """A master's SQLite file with a queue in it, closed (no master has it open)."""
    path = tmp_path / "converter.db"
    store = JobStore(path)
    try:
        fill(store)
    finally:
        store.close()
    return path


@pytest.fixture
def target(postgres) -> str:
    return postgres.new_database()


KEYS = {"jobs": "id", "workers": "id", "uploads": "id", "bucket_uploads": "job_id"}


def sqlite_rows(path: Path, table: str) -> dict[str, dict]:
    """Every row by its key; a job's with its ``rowid`` as ``seq``, the name PostgreSQL gives it."""
    rowid = "rowid AS seq, " if table == "jobs" else ""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute(f"SELECT {rowid}* FROM {table}")]
    db.close()
    return {row[KEYS[table]]: row for row in rows}


def postgres_rows(url: str, table: str) -> dict[str, dict]:
    with psycopg.connect(url, row_factory=dict_row) as db:
        return {row[KEYS[table]]: row for row in db.execute(f"SELECT * FROM {table}")}


def job_count(url: str) -> int:
    with psycopg.connect(url) as db:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as db:
        return [row[0] for row in db.execute("SELECT table_name FROM information_schema.tables"
                                              " WHERE table_schema = 'public'")]


# -- a queue moves --------------------------------------------------------------------------------------------------

def test_every_row_of_every_table_arrives_as_it_was(sqlite_queue, target):
    result = migrate_db("--from", sqlite_queue, "--to", target)

    assert result.returncode == 0, result.stderr
    summary = dict(line.split()[:2] for line in result.stdout.splitlines()[1:])
    assert {table: summary[table] for table in KEYS} == {"jobs": "8", "workers": "2", "uploads": "2",
                                                         "bucket_uploads": "1"}
    assert PASSWORD not in result.stdout
    for table in KEYS:
        assert postgres_rows(target, table) == sqlite_rows(sqlite_queue, table), table


def test_the_store_on_postgresql_answers_as_it_did_on_sqlite(sqlite_queue, target):
    assert migrate_db("--from", sqlite_queue, "--to", target).returncode == 0
    before, after = JobStore(sqlite_queue), JobStore(target)
    try:
        jobs, total = before.list_jobs()
        assert after.list_jobs() == (jobs, total) and total == 8
        assert {job.status.value for job in jobs} == {"pending", "processing", "completed", "failed", "cancelled"}
        assert after.list_workers() == before.list_workers()
        assert sorted(after.list_uploads(), key=lambda u: u.id) == sorted(before.list_uploads(), key=lambda u: u.id)
        assert after.bucket_upload("job-4") == before.bucket_upload("job-4")
        assert after.counts_by_status() == before.counts_by_status()
    finally:
        before.close()
        after.close()


def test_pending_jobs_are_claimed_in_their_old_order_and_new_jobs_come_after_them(sqlite_queue, target):
    assert migrate_db("--from", sqlite_queue, "--to", target).returncode == 0
    before, after = JobStore(sqlite_queue), JobStore(target)
    try:
        for store in (before, after):
            store.create_job(job_id="fresh", source_path="in/fresh.mkv", output_path="out/fresh.mp4",
                             profile="h264-720p", source_size=1, source_sha256="0" * 64, source_mtime_ns=1,
                             max_attempts=3, now=T - 1000)  # created "earlier": only the insertion order counts

        def claim_all(store: JobStore) -> list[str]:
            claimed = []
            while (job := store.claim_next("w9", 60, now=T + 10_000)) is not None:
                claimed.append(job.id)
            return claimed

        order = claim_all(after)
        assert order == claim_all(before)
        assert order == ["job-2", "job-5", "job-6", "job-7", "fresh"]
    finally:
        before.close()
        after.close()
    with psycopg.connect(target) as db:
        fresh, copied = db.execute("SELECT MAX(seq) FILTER (WHERE id = 'fresh'),"
                                   " MAX(seq) FILTER (WHERE id <> 'fresh') FROM jobs").fetchone()
    assert fresh > copied


def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "db-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def without_password(url: str) -> str:
    return url.replace(f"{USER}:{PASSWORD}@", f"{USER}@")


def test_the_password_may_come_from_a_file(sqlite_queue, target, tmp_path):
    result = migrate_db("--from", sqlite_queue, "--to", without_password(target),
                        "--password-file", password_file(tmp_path))

    assert result.returncode == 0, result.stderr
    assert job_count(target) == 8


def test_source_and_target_may_come_from_the_masters_config(sqlite_queue, target, tmp_path):
    config = tmp_path / "master.yaml"
    config.write_text(f"database: {{path: {sqlite_queue}, url: \"{without_password(target)}\","
                      f" password_file: {password_file(tmp_path)}}}\n")

    result = migrate_db("--config", config)

    assert result.returncode == 0, result.stderr
    assert job_count(target) == 8


# -- refusals: one line, a non-zero exit, nothing copied ------------------------------------------------------------

def test_a_target_that_holds_jobs_is_refused(sqlite_queue, target):
    assert migrate_db("--from", sqlite_queue, "--to", target).returncode == 0

    line = refusal(migrate_db("--from", sqlite_queue, "--to", target))

    assert "is not empty (" in line and "jobs: 8 rows" in line and PASSWORD not in line
    assert job_count(target) == 8


@pytest.mark.parametrize("url, says", [
    ("mysql://converter@127.0.0.1/converter", "must be a postgresql:// URL"),
    ("postgresql://converter:wrong@127.0.0.1:1/converter", "Connection refused"),
])
def test_a_target_that_is_no_postgresql_database_is_refused(sqlite_queue, url, says):
    assert says in refusal(migrate_db("--from", sqlite_queue, "--to", url))


def test_a_password_file_others_may_read_is_refused(sqlite_queue, target, tmp_path):
    readable = password_file(tmp_path)
    readable.chmod(0o644)

    result = migrate_db("--from", sqlite_queue, "--to", without_password(target), "--password-file", readable)

    assert "readable by others" in refusal(result) and result.returncode == 2


def test_a_wrong_password_is_refused_without_showing_it(sqlite_queue, target):
    line = refusal(migrate_db("--from", sqlite_queue, "--to", target.replace(PASSWORD, "not-the-password")))
    assert "password authentication failed" in line and "not-the-password" not in line


def test_a_missing_source_is_refused(tmp_path, target):
    line = refusal(migrate_db("--from", tmp_path / "nowhere.db", "--to", target))
    assert line == f"converter-master migrate-db: no SQLite database at {tmp_path / 'nowhere.db'}"


def test_a_source_that_is_no_sqlite_database_is_refused(tmp_path, target):
    (tmp_path / "notes.txt").write_text("not a database, but long enough to have a header of its own\n" * 3)
    assert "file is not a database" in refusal(migrate_db("--from", tmp_path / "notes.txt", "--to", target))


def test_a_source_a_master_has_open_is_refused(sqlite_queue, target):
    store = JobStore(sqlite_queue)  # as a running master holds it
    try:
        line = refusal(migrate_db("--from", sqlite_queue, "--to", target))
    finally:
        store.close()
    assert "is in use (a master has it open): stop it first" in line
    assert tables(target) == []
    assert migrate_db("--from", sqlite_queue, "--to", target).returncode == 0  # once it is closed


def test_a_source_at_another_schema_version_is_refused(sqlite_queue, target):
    with sqlite3.connect(sqlite_queue) as db:
        latest = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        db.execute("DELETE FROM schema_migrations WHERE version = ?", (latest,))
    db.close()

    line = refusal(migrate_db("--from", sqlite_queue, "--to", target))

    assert f"is at schema version {latest - 1}, this build's is {latest}" in line
    assert tables(target) == []
