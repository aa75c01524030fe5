"""The two read queries the console adds to the store, on SQLite and PostgreSQL."""

import pytest

from master.states import JobStatus
from master.store import JobStore

HOUR = 3600.0
NOW = 1_000 * HOUR + 1800  # half past an hour


@pytest.fixture
def store(database):
    store = JobStore(database)
    yield store
    store.close()


def add(store, job_id, *, created, source="in/a.mkv", profile="h264-720p"):
    return store.create_job(job_id=job_id, source_path=source, output_path=f"out/{job_id}.mp4", profile=profile,
                            source_size=1000, source_sha256="0" * 64, source_mtime_ns=0, max_attempts=3, now=created)


def test_search_pages_newest_first_with_filters_and_literal_text(store):
    for n in range(7):
        add(store, f"j{n}", created=NOW + n, source=f"in/movie_{n}%.mkv" if n % 2 else f"in/movieX{n}.mkv")
    jobs, total = store.search_jobs(limit=3, offset=3)
    assert total == 7 and [j.id for j in jobs] == ["j3", "j2", "j1"]
    jobs, total = store.search_jobs(text="movie_")  # "_" is not a wildcard
    assert total == 3 and [j.id for j in jobs] == ["j5", "j3", "j1"]
    assert store.search_jobs(text="%")[1] == 3
    assert [j.id for j in store.search_jobs(text="j4")[0]] == ["j4"]
    store.claim_next("w1", lease_seconds=60, now=NOW + 10)
    jobs, total = store.search_jobs(status=JobStatus.PROCESSING, worker_id="w1")
    assert total == 1 and jobs[0].worker_id == "w1"
    assert store.search_jobs(profile="other")[1] == 0


def test_finished_per_hour_buckets_by_the_hour_a_job_completed(store):
    for n, finished in enumerate((NOW - 2 * HOUR, NOW - 2 * HOUR + 1700, NOW - 1, NOW + 1000, NOW - 30 * HOUR)):
        add(store, f"j{n}", created=finished - 100)
        store.claim_next("w1", lease_seconds=60, now=finished - 50)
        store.complete(f"j{n}", 400, "1" * 64, worker_id="w1", now=finished)
    hour_now = int(NOW // HOUR) * 3600
    assert store.finished_per_hour(24, now=NOW + 1000) == [
        (hour_now - 7200, 2, 2000, 800), (hour_now, 2, 2000, 800)]
