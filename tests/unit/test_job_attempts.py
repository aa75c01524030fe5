"""Every attempt of a job that ended is kept (``job_attempts``, written by a trigger), on both backends."""

import pytest

from master.store import JobNotFound, JobStore



def add(store, job_id="j1", max_attempts=3):
    return store.create_job(job_id=job_id, source_path="in/a.mp4", output_path=f"out/{job_id}.mp4",
                            profile="h264-720p", source_size=10, source_sha256="00" * 32, source_mtime_ns=1,
                            max_attempts=max_attempts)


def outcomes(store, job_id="j1"):
    return [(a["attempt"], a["worker_id"], a["outcome"], a["error"]) for a in store.attempts_of(job_id)]


def test_a_job_not_claimed_yet_has_no_attempts(store):
    add(store)
    assert store.attempts_of("j1") == []


def test_each_ended_attempt_is_kept_with_its_worker_and_outcome(store):
    add(store)
    store.claim_next("w1", 10, now=100)
    store.fail("j1", worker_id="w1", error="ffmpeg exited 1", retryable=True, retry_delay=0, now=101)
    store.claim_next("w2", 10, now=102)
    store.requeue_expired(now=113)
    store.claim_next("w3", 10, now=114)
    store.complete("j1", 5, "ab" * 32, worker_id="w3", now=115)

    assert outcomes(store) == [(1, "w1", "pending", "ffmpeg exited 1"), (2, "w2", "pending", "lease expired"),
                               (3, "w3", "completed", None)]
    first = store.attempts_of("j1")[0]
    assert (first["claimed_at"], first["ended_at"]) == (100, 101)


def test_a_running_attempt_is_not_listed_until_it_ends(store):
    add(store)
    store.claim_next("w1", 10, now=100)
    store.heartbeat("j1", worker_id="w1", progress=40, lease_seconds=10, now=105)
    assert store.attempts_of("j1") == []
    store.cancel("j1", now=106)
    assert outcomes(store) == [(1, "w1", "cancelled", None)]


def test_a_released_attempt_is_given_back_not_kept(store):
    add(store)
    store.claim_next("w1", 10, now=100)
    store.release("j1", worker_id="w1", reason="shutdown")
    assert store.attempts_of("j1") == []


def test_attempts_before_and_after_a_retry_are_all_kept(store):
    add(store, max_attempts=1)
    store.claim_next("w1", 10, now=100)
    store.fail("j1", worker_id="w1", error="bad source", retryable=False, retry_delay=0, now=101)
    store.retry("j1")
    store.claim_next("w2", 10, now=102)
    store.complete("j1", 5, "ab" * 32, worker_id="w2", now=103)
    assert outcomes(store) == [(1, "w1", "failed", "bad source"), (1, "w2", "completed", None)]


def test_an_unknown_job_has_no_attempts_to_show(store):
    with pytest.raises(JobNotFound):
        store.attempts_of("nope")


def test_a_database_from_before_keeps_the_latest_attempt_of_each_finished_job(database):
    store = JobStore(database)
    add(store)
    store.claim_next("w1", 10, now=100)
    store.complete("j1", 5, "ab" * 32, worker_id="w1", now=101)
    add(store, job_id="j2")
    store._db.execute("DELETE FROM job_attempts")  # as a database made before migration 5 had none
    store._db.execute("DELETE FROM schema_migrations WHERE version = 5")
    store.close()

    again = JobStore(database)
    assert outcomes(again) == [(1, "w1", "completed", None)] and again.attempts_of("j2") == []
    again.close()
