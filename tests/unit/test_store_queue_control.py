"""The store's side of issue 18 on both backends: claims by priority (under a race of claimers), a pending job's
priority changed, the queue and single workers paused (surviving a reopen), the space completed jobs saved, and
migration 4 on a database at version 3."""

from __future__ import annotations

import random

import pytest

from master.store import MIGRATIONS, JobNotFound, JobNotPending, JobStore, WorkerNotFound
from tests.fixtures import claim_in_race



def add(store, job_id, priority=0, source_size=10, profile="h264-720p", now=None):
    return store.create_job(job_id=job_id, source_path=f"in/{job_id}.mkv", output_path=f"out/{job_id}.mp4",
                            profile=profile, source_size=source_size, source_sha256="00" * 32, source_mtime_ns=1,
                            max_attempts=3, priority=priority, now=now)


def register(store, worker_id):
    return store.register_worker(worker_id=worker_id, hostname="h", capabilities={}, concurrency=1)


class TestPriority:
    def test_claims_take_the_highest_priority_then_the_oldest(self, store):
        for number, priority in enumerate([0, 5, 0, 5, -3, 1000, -1000]):
            add(store, f"j{number}", priority, now=number)
        claimed = [store.claim_next("w", 30).id for _ in range(7)]
        assert claimed == ["j5", "j1", "j3", "j0", "j2", "j4", "j6"]

    def test_a_race_of_claimers_takes_every_job_once_each_in_priority_order(self, store):
        """Four claimers at once: each job once, and each claimer's own claims in (priority desc, age) order,
        since what is left to claim only shrinks (a claim always takes the first of what is left)."""
        rng = random.Random(18)
        order = {}
        for number in range(120):
            priority = rng.choice([-5, 0, 0, 3, 10])
            add(store, f"j{number:03d}", priority)
            order[f"j{number:03d}"] = (-priority, number)
        claimed = claim_in_race([store], 4)
        ids = [job_id for jobs in claimed.values() for job_id in jobs]
        assert sorted(ids) == sorted(order)
        for jobs in claimed.values():
            assert [order[j] for j in jobs] == sorted(order[j] for j in jobs)

    def test_a_pending_jobs_priority_changes_and_a_claimed_ones_does_not(self, store):
        add(store, "old", 0, now=1)
        add(store, "new", 0, now=2)
        assert store.set_priority("new", 7).priority == 7
        assert store.claim_next("w", 30).id == "new"
        with pytest.raises(JobNotPending):
            store.set_priority("new", 9)
        assert store.get_job("new").priority == 7
        with pytest.raises(JobNotFound):
            store.set_priority("nobody", 1)


class TestPauses:
    def test_a_paused_queue_gives_no_job_and_stays_paused_after_a_reopen(self, database):
        first = JobStore(database)
        add(first, "j1")
        paused_at = first.pause_queue(now=100.0)
        assert first.pause_queue(now=200.0) == paused_at == 100.0  # pausing twice keeps the first time
        assert first.claim_next("w", 30) is None and first.claims_paused("w") == "queue"
        first.close()
        again = JobStore(database)  # a master restart
        try:
            assert again.queue_paused_at() == 100.0 and again.claim_next("w", 30) is None
            again.resume_queue()
            assert again.queue_paused_at() is None and again.claims_paused("w") is None
            assert again.claim_next("w", 30).id == "j1"
        finally:
            again.close()

    def test_a_pause_through_one_master_holds_for_another_on_the_same_postgresql(self, postgres):
        url = postgres.new_database()
        first, second = JobStore(url), JobStore(url)
        try:
            add(first, "j1")
            register(first, "w")
            first.pause_queue()
            assert second.claim_next("w", 30) is None and second.claims_paused("w") == "queue"
            second.resume_queue()
            first.pause_worker("w")
            assert second.claim_next("w", 30) is None and second.claims_paused("w") == "worker"
            second.resume_worker("w")
            assert first.claim_next("w", 30).id == "j1"
        finally:
            first.close()
            second.close()

    def test_a_paused_worker_gets_nothing_while_others_claim(self, store):
        add(store, "j1", now=1)
        add(store, "j2", now=2)
        register(store, "slow")
        register(store, "fast")
        assert store.pause_worker("slow", now=5.0).paused_at == 5.0
        register(store, "slow")  # a restarted worker re-registers: still paused
        assert store.claim_next("slow", 30) is None and store.claims_paused("slow") == "worker"
        assert store.claim_next("fast", 30).id == "j1"
        assert store.resume_worker("slow").paused_at is None
        assert store.claim_next("slow", 30).id == "j2"

    def test_an_unknown_worker_cannot_be_paused(self, store):
        with pytest.raises(WorkerNotFound):
            store.pause_worker("ghost")
        with pytest.raises(WorkerNotFound):
            store.resume_worker("ghost")

    def test_a_workers_schedule_is_kept_as_it_reported_it(self, store):
        schedule = {"windows": ["22:00-07:00"], "open": False, "next_change": 1e9}
        worker = store.register_worker(worker_id="night", hostname="h", capabilities={}, concurrency=1,
                                       schedule=schedule)
        assert worker.schedule == schedule and worker.scheduled_off
        assert not register(store, "night").scheduled_off  # it stopped sending one: no schedule


class TestSpaceSaved:
    def test_stats_add_up_to_the_completed_jobs(self, store):
        runs = [("a", "h264-720p", "w1", 1000, 400), ("b", "h264-720p", "w2", 2000, 500),
                ("c", "hevc-1080p", "w1", 300, 900), ("d", "h264-720p", "w1", 50, None)]  # d never completes
        for job_id, profile, _worker, size, _output in runs:
            add(store, job_id, source_size=size, profile=profile)
        for job_id, _profile, worker, _size, output in runs:
            store.claim_next(worker, 30)
            if output is not None:
                store.complete_job(job_id, output, "ab" * 32, worker_id=worker)
        stats = store.space_saved(days=7)
        assert stats["totals"] == {"jobs": 3, "source_bytes": 3300, "output_bytes": 1800, "saved_bytes": 1500}
        assert {row["profile"]: row["saved_bytes"] for row in stats["by_profile"]} == {"h264-720p": 2100,
                                                                                       "hevc-1080p": -600}
        assert {row["worker_id"]: (row["jobs"], row["saved_bytes"]) for row in stats["by_worker"]} == {
            "w1": (2, 0), "w2": (1, 1500)}
        assert len(stats["by_day"]) == 1 and stats["by_day"][0]["saved_bytes"] == 1500
        assert store.get_job("c").saved_bytes == -600 and store.get_job("d").saved_bytes is None

    def test_days_are_utc_calendar_days(self, store):
        day = 20_000 * 86400.0  # 2024-10-04 00:00 UTC
        for job_id, finished in (("late", day - 1), ("early", day + 1)):
            add(store, job_id, source_size=100)
            store.claim_next("w", 30)
            store.complete(job_id, 40, "ab" * 32, worker_id="w", now=finished)
        stats = store.space_saved(days=3, now=day + 3600)
        assert [(row["day"], row["jobs"]) for row in stats["by_day"]] == [("2024-10-03", 1), ("2024-10-04", 1)]


def test_migration_4_brings_a_version_3_database_to_priorities_and_pauses(database):
    """A database as build 3 left it (no priority, no pauses, the claim index in insertion order): reopened, it
    gets the columns (old jobs at priority 0), the pause table and the claim index in priority order."""
    store = JobStore(database)
    add(store, "old")
    postgres = store.dialect == "postgres"
    for statement in ("DROP INDEX jobs_claimable", "ALTER TABLE jobs DROP COLUMN priority",
                      "ALTER TABLE workers DROP COLUMN paused_at", "ALTER TABLE workers DROP COLUMN schedule",
                      "ALTER TABLE uploads DROP COLUMN priority", "DROP TABLE queue_pause",
                      f"CREATE INDEX jobs_claimable ON jobs ({'seq' if postgres else 'not_before'})"
                      " WHERE status = 'pending'",
                      "DELETE FROM schema_migrations WHERE version = 4"):
        store._db.execute(statement)
    store.close()
    again = JobStore(database)
    try:
        assert again.schema_version == MIGRATIONS[-1][0] >= 4
        assert again.get_job("old").priority == 0
        add(again, "urgent", priority=10)
        assert again.claim_next("w", 30).id == "urgent"
        index = again._db.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_claimable'" if postgres
                                  else "SELECT sql FROM sqlite_master WHERE name = 'jobs_claimable'").fetchone()[0]
        assert "priority DESC" in index and "pending" in index
    finally:
        again.close()

