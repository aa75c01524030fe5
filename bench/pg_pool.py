#!/usr/bin/env python3
"""make bench-pg-pool: how should a master talk to PostgreSQL? Three designs, measured on the same routes.

A PostgreSQL 15 is started with ``initdb`` + ``pg_ctl`` in a temp dir (as the tests do). For each design a server
process runs the real ``JobStore`` behind two routes shaped like the master's (``POST /submit``: create a job and
wake the claimers; ``POST /claim``: claim the oldest pending job, long-polling like ``ClaimHandler``):

* ``sqlite``: the reference, a SQLite file (the one-master default), statements on the IOLoop;
* ``single``: the design before the pool, one psycopg connection, statements on the IOLoop under the store's
  lock (the class below is that code);
* ``pool_loop``: ``master/database.py`` as shipped, a ``psycopg_pool`` pool, statements still on the IOLoop;
* ``pool_threads``: the same pool with ``--threads`` connections, every store call sent to a bounded
  ``ThreadPoolExecutor`` of ``--threads`` threads (``run_in_executor``) and the store's lock taken away, so up to
  ``--threads`` statements are in flight at once.

Measured for each, one design at a time: submit -> claim latency (``--jobs`` jobs, one claimer long-polling,
latency = claim answer received - submit answer received), submit latency while filling the queue, and claims/s
with ``--claimers`` concurrent claimer processes emptying ``--fill`` queued jobs.

Prints, last, one line: ``pg-pool: <design>_p50_ms=.. <design>_p99_ms=.. <design>_submit_ms=..
<design>_claims_per_s=.. ...`` for each design.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import benchlib  # noqa: E402

DESIGNS = ("sqlite", "single", "pool_loop", "pool_threads")


# -- the server ----------------------------------------------------------------------------------------------------

class SingleConnection:
    """The baseline: ``PostgresDatabase`` as it was before the pool (one autocommit connection, never replaced)."""

    dialect = "postgres"
    available = True
    reconnects = 0

    def __init__(self, url: str) -> None:
        import psycopg

        from master.database import _row_factory
        self.IntegrityError = psycopg.IntegrityError
        self._db = psycopg.connect(url, autocommit=True, row_factory=_row_factory)
        self._depth = 0

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def execute(self, sql, params=()):
        from master.database import translate
        return self._db.execute(translate(sql, named=isinstance(params, dict)), params or None)

    @contextmanager
    def transaction(self):
        with self._db.transaction():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def close(self) -> None:
        self._db.close()


class NoLock:
    """What the store's lock becomes when statements run on several threads, each with its own connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def open_store(design: str, url: str, threads: int):
    from master.database import PostgresDatabase
    from master.store import JobStore

    store = JobStore(url)
    if design == "single":
        store._db.close()
        store._db = SingleConnection(url)
    elif design == "pool_threads":
        store._db.close()
        store._db = PostgresDatabase(url, pool_size=threads)
        store._lock = NoLock()
    return store


def serve(design: str, url: str, port: int, threads: int) -> None:
    import tornado.ioloop
    import tornado.web

    from master.wakeup import WakeUpSignal

    store = open_store(design, url, threads)
    wakeup = WakeUpSignal()
    executor = concurrent.futures.ThreadPoolExecutor(threads) if design == "pool_threads" else None

    async def call(fn, *args, **kwargs):
        if executor is None:
            return fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    class Submit(tornado.web.RequestHandler):
        async def post(self) -> None:
            job_id = json.loads(self.request.body)["id"]
            await call(store.create_job, job_id=job_id, source_path="src.mp4", output_path=f"out/{job_id}.mp4",
                       profile="h264-720p", source_size=4096, source_sha256="0" * 64, source_mtime_ns=1,
                       max_attempts=3)
            wakeup.send()
            self.set_status(201)

    class Claim(tornado.web.RequestHandler):
        async def post(self) -> None:
            body = json.loads(self.request.body)
            loop = tornado.ioloop.IOLoop.current()
            deadline = loop.time() + body.get("wait", 0)
            while True:
                job = await call(store.claim_next, body["worker_id"], 600)
                if job is not None:
                    self.finish(json.dumps(job.to_dict()))
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.set_status(204)
                    return
                try:
                    await wakeup.wait(min(remaining, 1.0))
                except TimeoutError:
                    pass

    class Ready(tornado.web.RequestHandler):
        def get(self) -> None:
            self.finish("ok")

    async def main() -> None:
        app = tornado.web.Application([(r"/submit", Submit), (r"/claim", Claim), (r"/healthz", Ready)])
        app.listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # benchlib.stop_process ends it with SIGINT
        pass


# -- the clients ---------------------------------------------------------------------------------------------------

def submit(session: requests.Session, base: str, job_id: str) -> tuple[float, float]:
    """(when the request was sent, when its answer arrived), perf_counter seconds."""
    sent = time.perf_counter()
    answer = session.post(base + "/submit", data=json.dumps({"id": job_id}), timeout=30)
    if answer.status_code != 201:
        raise RuntimeError(f"submit {job_id}: {answer.status_code} {answer.text[:200]}")
    return sent, time.perf_counter()


def claim(session: requests.Session, base: str, worker_id: str, wait: float) -> dict | None:
    answer = session.post(base + "/claim", data=json.dumps({"worker_id": worker_id, "wait": wait}), timeout=wait + 30)
    if answer.status_code == 204:
        return None
    if answer.status_code != 200:
        raise RuntimeError(f"claim: {answer.status_code} {answer.text[:200]}")
    return answer.json()


def phase_latency(base: str, jobs: int) -> dict:
    claimed: dict[str, float] = {}
    waiting = threading.Event()

    def claimer() -> None:
        session = requests.Session()
        while len(claimed) < jobs:
            waiting.set()
            job = claim(session, base, "lat", 20)
            if job is not None:
                claimed[job["id"]] = time.perf_counter()

    thread = threading.Thread(target=claimer, daemon=True)
    thread.start()
    session = requests.Session()
    answered: dict[str, float] = {}
    for i in range(jobs):
        waiting.wait(30)
        waiting.clear()
        time.sleep(0.005)  # the claim reaches the server and parks in its long poll
        job_id = f"lat-{i:05d}"
        answered[job_id] = submit(session, base, job_id)[1]
        deadline = time.monotonic() + 30
        while job_id not in claimed:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{job_id} not claimed within 30 s")
            time.sleep(0.0005)
    thread.join(30)
    latencies = [(claimed[j] - answered[j]) * 1000 for j in answered]
    return {"p50_ms": benchlib.percentile(latencies, 50), "p99_ms": benchlib.percentile(latencies, 99)}


def _claimer_process(base: str, worker_id: str, go, out) -> None:
    session = requests.Session()
    session.get(base + "/healthz", timeout=10)  # the keep-alive connection is made before the clock starts
    out.put("ready")
    go.wait(60)
    claims = 0
    while claim(session, base, worker_id, 0) is not None:
        claims += 1
    out.put((claims, time.time()))


def phase_throughput(base: str, fill: int, claimers: int) -> dict:
    session = requests.Session()
    submits = [submit(session, base, f"tp-{i:06d}") for i in range(fill)]
    submit_ms = [(answered - sent) * 1000 for sent, answered in submits]
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()
    processes = [context.Process(target=_claimer_process, args=(base, f"c{k:02d}", go, out), daemon=True)
                 for k in range(claimers)]
    for process in processes:
        process.start()
    for _ in processes:
        out.get(timeout=60)
    started = time.time()
    go.set()
    results = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(10)
    total = sum(claims for claims, _ in results)
    elapsed = max(end for _, end in results) - started
    if total != fill:
        raise RuntimeError(f"{total} claims of {fill} jobs")
    return {"submit_ms": benchlib.percentile(submit_ms, 50), "claims_per_s": total / elapsed}


def measure(design: str, postgres, args) -> dict:
    url = str(Path(postgres.workdir) / f"{design}-{time.monotonic_ns()}.db") if design == "sqlite" \
        else postgres.new_database()
    port = benchlib.free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", design, "--url", url, "--port", str(port),
                               "--threads", str(args.threads)])
    base = f"http://127.0.0.1:{port}"
    try:
        benchlib.wait_http(base + "/healthz", proc=server)
        figures = phase_latency(base, args.jobs)
        figures.update(phase_throughput(base, args.fill, args.claimers))
    finally:
        benchlib.stop_process(server)
    print(f"{design}: " + " ".join(f"{k}={v:.2f}" for k, v in figures.items()), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="submit -> claim latency samples")
    parser.add_argument("--fill", type=int, default=3000, help="jobs queued for the claims/s phase")
    parser.add_argument("--claimers", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="pool_threads: threads and connections")
    parser.add_argument("--rounds", type=int, default=2, help="each design this many times, interleaved; best kept")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--serve", choices=DESIGNS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.url, args.port, args.threads)
        return 0

    from tests.postgres import PostgreSQL

    postgres = PostgreSQL(Path(tempfile.mkdtemp(prefix="bench-pg-pool-"))).start()
    try:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for design in args.designs.split(","):
                figures = measure(design, postgres, args)
                kept = best.setdefault(design, figures)
                if figures["claims_per_s"] > kept["claims_per_s"]:
                    best[design] = figures
    finally:
        postgres.stop()
        shutil.rmtree(postgres.workdir, ignore_errors=True)
    line = " ".join(f"{design}_{key}={value:.2f}" for design, figures in best.items() for key, value in figures.items())
    print(f"pg-pool: cpus={os.cpu_count()} claimers={args.claimers} threads={args.threads} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
