#!/usr/bin/env python3
"""make bench-queue: does a long history of finished jobs slow claims down, on SQLite and on PostgreSQL?

For each backend (a SQLite file in a temp dir; a PostgreSQL 15 started with ``initdb`` + ``pg_ctl`` in a temp
dir, as the tests do), the real ``JobStore``: ``--history`` completed jobs, then ``--pending`` pending ones;
then ``--claims`` claims (``JobStore.claim_next``, the statement the claim route runs) are timed one by one,
with the schema's indexes, and again after dropping the partial index of pending jobs (migration 2). The
statements are the store's own; the history rows are inserted in bulk to save time.

Prints, last, one line: ``queue: history=.. claim_ms_sqlite=.. claim_ms_sqlite_without_partial=..
claim_ms_postgres=.. claim_ms_postgres_without_partial=.. list_page_ms_postgres=..`` (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from master.store import JobStore  # noqa: E402
from tests.postgres import PostgreSQL  # noqa: E402


def fill(store: JobStore, history: int, pending: int) -> None:
    now = time.time()
    rows = [(f"h{i}", "completed", f"in/{i}.mkv", f"out/{i}.mp4", "h264-720p", 1000, "0" * 64, 1, 1000, "1" * 64,
             1, 3, "w", now, now, now) for i in range(history)]
    store._db.executemany(
        "INSERT INTO jobs (id, status, source_path, output_path, profile, source_size, source_sha256,"
        " source_mtime_ns, output_size, output_sha256, attempts, max_attempts, worker_id, created_at, updated_at,"
        " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    for i in range(pending):
        store.create_job(job_id=f"p{i}", source_path=f"in/p{i}.mkv", output_path=f"out/p{i}.mp4",
                         profile="h264-720p", source_size=1000, source_sha256="0" * 64, source_mtime_ns=1,
                         max_attempts=3)
    if store.dialect == "postgres":
        store._db.execute("ANALYZE jobs")
    else:
        store._db.execute("ANALYZE")


def time_claims(store: JobStore, claims: int) -> float:
    times = []
    for i in range(claims):
        started = time.perf_counter()
        job = store.claim_next(f"w{i % 4}", 600)
        times.append((time.perf_counter() - started) * 1000)
        assert job is not None, "ran out of pending jobs"
    return statistics.median(times)


def time_list(store: JobStore, pages: int = 20) -> float:
    times = []
    for _ in range(pages):
        started = time.perf_counter()
        store.list_jobs(limit=100, offset=0)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(open_store, history: int, pending: int, claims: int) -> tuple[float, float, float]:
    store = open_store()
    fill(store, history, pending)
    with_index = time_claims(store, claims)
    listing = time_list(store)
    store._db.execute("DROP INDEX jobs_claimable")
    without = time_claims(store, claims)
    store.close()
    return with_index, without, listing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--pending", type=int, default=1_000)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        sqlite = measure(lambda: JobStore(Path(tmp) / "jobs.db"), args.history, args.pending, args.claims)
        server = PostgreSQL(Path(tempfile.mkdtemp(prefix="bench-queue-pg-"))).start()
        try:
            postgres = measure(lambda: JobStore(server.new_database()), args.history, args.pending, args.claims)
        finally:
            server.stop()
    print(f"{'backend':<12} {'claim ms':>9} {'no partial idx':>15} {'list page ms':>13}")
    print(f"{'sqlite':<12} {sqlite[0]:9.3f} {sqlite[1]:15.3f} {sqlite[2]:13.3f}")
    print(f"{'postgresql':<12} {postgres[0]:9.3f} {postgres[1]:15.3f} {postgres[2]:13.3f}")
    print(f"queue: history={args.history} claim_ms_sqlite={sqlite[0]:.3f} claim_ms_sqlite_without_partial="
          f"{sqlite[1]:.3f} claim_ms_postgres={postgres[0]:.3f} claim_ms_postgres_without_partial={postgres[1]:.3f}"
          f" list_page_ms_postgres={postgres[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
