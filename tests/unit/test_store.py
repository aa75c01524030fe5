import threading

import pytest

from master.states import JobStatus, Transition
from master.store import DuplicateJob, InvalidTransition, JobNotFound, JobStore, NotOwner, OutputBusy
from tests.fixtures import claim_in_race



def add(store, job_id="j1", output="out/j1.mp4", max_attempts=3, **kw):
    return store.create_job(job_id=job_id, source_path="in/a.mp4", output_path=output, profile="h264-720p",
                            source_size=10, source_sha256="00" * 32, source_mtime_ns=1, max_attempts=max_attempts, **kw)


class TestCreate:
    def test_new_job_is_pending(self, store):
        assert add(store).status is JobStatus.PENDING

    def test_duplicate_id_is_refused(self, store):
        add(store)
        with pytest.raises(DuplicateJob):
            add(store, output="out/other.mp4")

    def test_two_active_jobs_cannot_write_one_output(self, store):
        add(store)
        with pytest.raises(OutputBusy):
            add(store, job_id="j2")

    def test_database_is_in_wal_mode_and_survives_reopen(self, tmp_path):
        s = JobStore(tmp_path / "x.db")
        add(s)
        s.close()
        again = JobStore(tmp_path / "x.db")
        assert again.get_job("j1").status is JobStatus.PENDING
        assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        again.close()


class TestMigrations:
    def test_each_numbered_migration_is_applied_once_on_either_backend(self, database):
        from master.store import MIGRATIONS
        first = JobStore(database)
        add(first)
        assert first.schema_version == MIGRATIONS[-1][0]
        first.close()
        again = JobStore(database)  # a restart, or a second master: nothing applied twice, nothing lost
        rows = again._db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [row[0] for row in rows] == [number for number, _, _ in MIGRATIONS]
        assert again.get_job("j1").status is JobStatus.PENDING
        again.close()

    def test_masters_starting_together_migrate_one_after_the_other(self, postgres):
        url = postgres.new_database()
        stores, errors = [], []

        def start() -> None:
            try:
                stores.append(JobStore(url))
            except Exception as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(stores) == 4
        for store in stores:
            store.close()


class TestClaim:
    def test_claim_takes_oldest_pending_and_leases_it(self, store):
        add(store, "a", "out/a.mp4", now=1)
        add(store, "b", "out/b.mp4", now=2)
        job = store.claim_next("w1", lease_seconds=30, now=100)
        assert (job.id, job.status, job.worker_id, job.attempts) == ("a", JobStatus.PROCESSING, "w1", 1)
        assert job.lease_expires_at == 130

    def test_claim_returns_none_on_empty_queue(self, store):
        assert store.claim_next("w1", 30) is None

    def test_retry_delay_holds_job_back(self, store):
        add(store)
        store.claim_next("w1", 30, now=0)
        store.fail("j1", worker_id="w1", error="net", retryable=True, retry_delay=10, now=1)
        assert store.claim_next("w1", 30, now=5) is None
        assert store.claim_next("w1", 30, now=11).id == "j1"

    def test_concurrent_claimers_never_share_a_job(self, store):
        for i in range(200):
            add(store, f"j{i}", f"out/{i}.mp4")
        claimed = claim_in_race([store], 4)
        ids = [j for jobs in claimed.values() for j in jobs]
        assert len(ids) == 200 and len(set(ids)) == 200


class TestCheckInAndClaim:
    """The worker's check-in and its claim in one call (on PostgreSQL one statement): what check_in then
    claim_next do, in that order."""

    def registered(self, store, worker_id="w1"):
        store.register_worker(worker_id=worker_id, hostname="h", capabilities={}, concurrency=1, now=1)

    def test_the_worker_is_seen_and_gets_the_oldest_job(self, store):
        self.registered(store)
        add(store, "a", "out/a.mp4", now=1)
        add(store, "b", "out/b.mp4", now=2)
        quarantined, job = store.check_in_and_claim("w1", 30, cache_free_bytes=500, now=100)
        assert quarantined is None
        assert (job.id, job.status, job.worker_id, job.attempts, job.lease_expires_at) == (
            "a", JobStatus.PROCESSING, "w1", 1, 130)
        worker = store.get_worker("w1")
        assert (worker.last_seen_at, worker.cache_free_bytes) == (100, 500)

    def test_an_empty_queue_still_records_the_check_in(self, store):
        self.registered(store)
        assert store.check_in_and_claim("w1", 30, cache_free_bytes=7, now=50) == (None, None)
        worker = store.get_worker("w1")
        assert (worker.last_seen_at, worker.cache_free_bytes) == (50, 7)
        assert store.check_in_and_claim("w1", 30, now=60) == (None, None)
        assert store.get_worker("w1").cache_free_bytes == 7  # not said this time: kept

    def test_a_quarantined_worker_gets_no_job_and_learns_until_when(self, store):
        self.registered(store)
        add(store)
        store.record_worker_outcome("w1", failed=True, threshold=1, quarantine_seconds=60, now=10)
        quarantined, job = store.check_in_and_claim("w1", 30, now=20)
        assert (quarantined, job) == (70, None)
        assert store.get_job("j1").status is JobStatus.PENDING
        assert store.get_worker("w1").last_seen_at == 20
        quarantined, job = store.check_in_and_claim("w1", 30, now=71)  # the quarantine over
        assert quarantined is None and job.id == "j1"

    def test_a_worker_not_registered_claims_as_claim_next_lets_it(self, store):
        add(store)
        quarantined, job = store.check_in_and_claim("stranger", 30)
        assert quarantined is None and job.worker_id == "stranger"

    def test_the_source_size_limit_and_a_paused_worker_hold_as_in_claim_next(self, store):
        self.registered(store)
        add(store)  # source_size 10
        assert store.check_in_and_claim("w1", 30, max_source_size=9) == (None, None)
        store.pause_worker("w1")
        assert store.check_in_and_claim("w1", 30, max_source_size=10) == (None, None)
        store.resume_worker("w1")
        assert store.check_in_and_claim("w1", 30, max_source_size=10)[1].id == "j1"

    def test_concurrent_claimers_on_two_stores_never_share_a_job(self, database):
        masters = [JobStore(database), JobStore(database)]
        try:
            for i in range(100):
                add(masters[0], f"j{i}", f"out/{i}.mp4")
            got: list[str] = []

            def claimer(store, worker_id):
                while (job := store.check_in_and_claim(worker_id, 30)[1]) is not None:
                    got.append(job.id)

            threads = [threading.Thread(target=claimer, args=(masters[k % 2], f"w{k}")) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(got) == sorted(f"j{i}" for i in range(100))
        finally:
            for store in masters:
                store.close()


    def test_two_masters_on_one_postgresql_claim_each_job_exactly_once(self, postgres):
        """Two stores (two masters' connections) on one database, two claimers each: 200 jobs, none twice,
        none lost, and no claimer comes back empty while jobs are left (SKIP LOCKED, not a lost update)."""
        url = postgres.new_database()
        masters = [JobStore(url), JobStore(url)]
        try:
            for i in range(200):
                add(masters[0], f"j{i}", f"out/{i}.mp4")
            claimed = claim_in_race(masters, 2)
            ids = [j for jobs in claimed.values() for j in jobs]
            assert len(ids) == 200 and len(set(ids)) == 200
            assert masters[1].counts_by_status()["pending"] == 0
        finally:
            for store in masters:
                store.close()


class TestTransitions:
    def test_complete_needs_processing(self, store):
        add(store)
        with pytest.raises(InvalidTransition):
            store.complete("j1", 5, "ab" * 32)

    def test_complete_by_other_worker_is_refused(self, store):
        add(store)
        store.claim_next("w1", 30)
        with pytest.raises(NotOwner):
            store.complete("j1", 5, "ab" * 32, worker_id="w2")
        assert store.get_job("j1").status is JobStatus.PROCESSING

    def test_completed_job_cannot_be_cancelled(self, store):
        add(store)
        store.claim_next("w1", 30)
        store.complete("j1", 5, "ab" * 32, worker_id="w1")
        with pytest.raises(InvalidTransition):
            store.cancel("j1")

    def test_unknown_job(self, store):
        with pytest.raises(JobNotFound):
            store.transition("nope", Transition.CANCEL)

    def test_retryable_failure_requeues_until_attempts_are_used(self, store):
        add(store, max_attempts=2)
        store.claim_next("w1", 30, now=0)
        assert store.fail("j1", worker_id="w1", error="e1", retryable=True, retry_delay=0, now=1).status \
            is JobStatus.PENDING
        store.claim_next("w1", 30, now=2)
        job = store.fail("j1", worker_id="w1", error="e2", retryable=True, retry_delay=0, now=3)
        assert (job.status, job.error, job.attempts) == (JobStatus.FAILED, "e2", 2)

    def test_fatal_failure_fails_at_once(self, store):
        add(store)
        store.claim_next("w1", 30)
        assert store.fail("j1", worker_id="w1", error="bad", retryable=False, retry_delay=0).status \
            is JobStatus.FAILED

    def test_release_does_not_count_the_attempt(self, store):
        add(store)
        store.claim_next("w1", 30)
        job = store.release("j1", worker_id="w1", reason="shutdown")
        assert (job.status, job.attempts, job.worker_id) == (JobStatus.PENDING, 0, None)

    def test_retry_resets_a_failed_job(self, store):
        add(store, max_attempts=1)
        store.claim_next("w1", 30)
        store.fail("j1", worker_id="w1", error="x", retryable=False, retry_delay=0)
        job = store.retry("j1")
        assert (job.status, job.attempts, job.error) == (JobStatus.PENDING, 0, None)


class TestLeases:
    def test_expired_lease_goes_back_to_pending(self, store):
        add(store)
        store.claim_next("w1", 10, now=0)
        [job] = store.requeue_expired(now=11)
        assert (job.status, job.error, job.worker_id) == (JobStatus.PENDING, "lease expired", None)

    def test_heartbeat_renews_the_lease(self, store):
        add(store)
        store.claim_next("w1", 10, now=0)
        store.heartbeat("j1", worker_id="w1", progress=50, lease_seconds=10, now=8)
        assert store.requeue_expired(now=11) == []
        assert store.get_job("j1").progress == 50

    def test_expired_lease_with_no_attempts_left_fails(self, store):
        add(store, max_attempts=1)
        store.claim_next("w1", 10, now=0)
        [job] = store.requeue_expired(now=11)
        assert job.status is JobStatus.FAILED

    def test_heartbeat_from_another_worker_is_refused(self, store):
        add(store)
        store.claim_next("w1", 10)
        with pytest.raises(NotOwner):
            store.heartbeat("j1", worker_id="w2", progress=None, lease_seconds=10)


def test_a_database_from_an_earlier_build_gets_the_columns_added_since(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # the jobs and uploads tables as the first builds made them
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, source_path TEXT NOT NULL,
            output_path TEXT NOT NULL, profile TEXT NOT NULL, source_size INTEGER NOT NULL,
            source_sha256 TEXT NOT NULL, source_mtime_ns INTEGER NOT NULL, output_size INTEGER,
            output_sha256 TEXT, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
            worker_id TEXT, lease_expires_at REAL, not_before REAL NOT NULL DEFAULT 0, progress REAL,
            error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, claimed_at REAL, finished_at REAL);
        CREATE TABLE uploads (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, worker_id TEXT, length INTEGER NOT NULL,
            offset INTEGER NOT NULL DEFAULT 0, temp_path TEXT NOT NULL, sha256 TEXT, created_at REAL NOT NULL);
        INSERT INTO jobs VALUES ('old', 'pending', 'in/a.mp4', 'out/a.mp4', 'h264-720p', 10, 'ab', 1, NULL, NULL,
            0, 3, NULL, NULL, 0, NULL, NULL, 1, 1, NULL, NULL);
    """)
    old.close()
    store = JobStore(path)
    try:
        job = store.get_job("old")
        assert job.status is JobStatus.PENDING and job.conversion_seconds is None and job.accel is None
        assert store.claim_next("w1", lease_seconds=60).id == "old"
        store.heartbeat("old", worker_id="w1", progress=0.5, lease_seconds=60,
                        conversion={"seconds": 1.0, "accel": "cpu"})
        assert store.get_job("old").accel == "cpu"
        assert [column for column in ("kind", "profile", "filename")
                if column not in {row[1] for row in store._db.execute("PRAGMA table_info(uploads)")}] == []
    finally:
        store.close()


class TestCompleteJob:
    """Completing a job, ending its worker's run of failures and forgetting its upload: one transaction."""

    def leased_with_upload(self, store):
        add(store)
        store.register_worker(worker_id="w1", hostname="h", capabilities={}, concurrency=1)
        store.record_worker_outcome("w1", failed=True, threshold=5, quarantine_seconds=60)
        job = store.claim_next("w1", 30)
        upload, _ = store.create_upload(upload_id="u" * 32, job_id=job.id, worker_id="w1", length=3,
                                        temp_path="out/.converter-tus-u.part", sha256=None, expires_at=1e12,
                                        attempt=job.attempts)
        return job, upload

    def test_all_three_happen(self, store):
        job, upload = self.leased_with_upload(store)
        done = store.complete_job(job.id, 3, "ab" * 32, worker_id="w1", upload_id=upload.id)
        assert done.status is JobStatus.COMPLETED and done.output_sha256 == "ab" * 32
        assert store.list_workers()[0].consecutive_failures == 0
        assert store.list_uploads() == []

    def test_none_happens_when_the_job_is_no_longer_the_workers(self, store):
        job, upload = self.leased_with_upload(store)
        store.cancel(job.id)
        with pytest.raises(InvalidTransition):
            store.complete_job(job.id, 3, "ab" * 32, worker_id="w1", upload_id=upload.id)
        assert store.list_workers()[0].consecutive_failures == 1
        assert [u.id for u in store.list_uploads()] == [upload.id]

    def test_a_job_created_from_a_source_upload_forgets_the_upload_with_it(self, store):
        store.create_upload(upload_id="s" * 32, job_id="j1", worker_id=None, length=3, temp_path="incoming/x",
                            sha256=None, expires_at=1e12, kind="source", profile="h264-720p")
        add(store, consumed_upload="s" * 32)
        assert store.list_uploads() == []

    def test_a_refused_job_keeps_the_source_upload(self, store):
        add(store, job_id="j0")
        store.create_upload(upload_id="s" * 32, job_id="j1", worker_id=None, length=3, temp_path="incoming/x",
                            sha256=None, expires_at=1e12, kind="source", profile="h264-720p")
        with pytest.raises(OutputBusy):  # j0 writes out/j1.mp4 already
            add(store, consumed_upload="s" * 32)
        assert [u.id for u in store.list_uploads()] == ["s" * 32]
