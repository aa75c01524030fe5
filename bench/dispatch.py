#!/usr/bin/env python3
"""make bench-dispatch: how fast a waiting worker learns of a job, claim throughput, cost of idle pollers.

Each phase starts a real ``converter-master`` process on a loopback port with a fresh temp SQLite DB and
storage directory (removed at the end):

1. latency: one claimer long-polls (``MasterClient.claim(wait=20)``, the worker's own code) while this
   script submits ``--jobs`` jobs one at a time with ``POST /api/jobs``. Latency = time the claim response
   arrived - time the POST response arrived (both ``perf_counter`` in this process).
2. throughput: ``--fill`` jobs are submitted first; then ``--claimers`` worker processes (spawned, each with
   its own ``MasterClient``) claim with ``wait=0`` until the queue answers 204 (or a deadline). claims/s =
   claims / (last claim answer - start signal).
3. idle: ``--claimers`` threads long-poll (wait=20) an empty queue; the master's CPU (user+sys from
   /proc via psutil) over ``--idle-seconds`` gives its CPU % of one core.

Prints one line ``dispatch: p50_ms=.. p99_ms=.. claims_per_s=.. idle_master_cpu_pct=..``, last without ``--postgres``.

``--postgres`` (``make bench-dispatch-pg``) then measures masters on PostgreSQL (a private PostgreSQL 15 started
with ``initdb`` + ``pg_ctl`` in a temp dir by ``tests/postgres.py``, as the tests do, but with Debian's durable
defaults (fsync, synchronous commits, full page writes) as a deployment runs it): two masters A and B on an
empty database, two more on a database given ``--history`` finished jobs (one ``INSERT ... SELECT`` from
``generate_series`` per 100,000 rows, through ``master.database``, then ``VACUUM ANALYZE``); the masters of a
database share one storage root.

4. cross-master latency: as 1, but the claimer long-polls master B while the jobs are submitted to master A
   (B learns of them by LISTEN/NOTIFY); and the claim round trip (``wait=0`` claims on B of jobs queued on A).
   Both tables, in alternating rounds, so that both see the same load on a shared machine;
5. throughput: as 2 on the long history, the jobs submitted to both masters, the ``--claimers`` spread over both;
   in alternating rounds (S P, P S, ...: ``--throughput-rounds``, half ``--fill`` each) with a fresh master on SQLite, whose figure is the one
   the target compares with.

and prints, last, ``dispatch-pg: p50_ms=.. p99_ms=.. claims_per_s=.. masters=2 rows=..``: the latency of 4
with the long history and the claims/s of 5, ``rows`` the jobs in that table.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402

TARGETS = {"p50_ms": ("<=", 50.0), "p99_ms": ("<=", 250.0), "claims_per_s": (">=", 300.0),
           "idle_master_cpu_pct": ("<", 5.0)}
PROFILE = "h264-720p"
# Lease long enough that no claimed job is requeued by the reaper while a phase runs.
MASTER_EXTRA = "jobs:\n  lease_seconds: 600\n"


def make_client(url: str, worker_id: str):
    from worker.client import MasterClient
    from worker.retry import RetryPolicy
    return MasterClient(url, worker_id, retry=RetryPolicy(attempts=1, base_delay=0))


def submit(session: requests.Session, url: str, job_id: str) -> float:
    """POST /api/jobs; returns perf_counter() when the 201 arrived."""
    r = session.post(url + "/api/jobs", json={"id": job_id, "source_path": "src.mp4",
                                              "output_path": f"out/{job_id}.mp4", "profile": PROFILE}, timeout=30)
    t = time.perf_counter()
    if r.status_code != 201:
        raise RuntimeError(f"submit {job_id}: {r.status_code} {r.text[:200]}")
    return t


def start_master(workdir: Path, name: str, profile_dir: Path | None) -> benchlib.Master:
    master = benchlib.Master(workdir / name, extra_config=MASTER_EXTRA)
    master.storage.mkdir(parents=True, exist_ok=True)
    (master.storage / "src.mp4").write_bytes(b"\0" * 4096)
    if profile_dir is not None:
        master.profile_out = profile_dir / f"master-{name}.prof"  # type: ignore[attr-defined]
    return master.start(profile_to=getattr(master, "profile_out", None))


# -- phase 1: submit -> claim latency ------------------------------------------------------------

def phase_latency(submit_url: str, claim_url: str, jobs: int, gap: float, prefix: str = "lat") -> dict:
    """The claimer long-polls ``claim_url``; the jobs are submitted to ``submit_url`` (the same master or not)."""
    client = make_client(claim_url, f"{prefix}-claimer")
    client.register({}, 1, "bench")
    claimed: dict[str, float] = {}
    ready = threading.Event()
    stop = threading.Event()
    errors: list[str] = []

    def claimer() -> None:
        for _ in range(jobs + 5):  # bounded
            if stop.is_set():
                return
            ready.set()
            try:
                job = client.claim(wait=20)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))
                return
            t = time.perf_counter()
            if job is not None:
                claimed[job["id"]] = t
                ready.clear()
            if len(claimed) >= jobs:
                return

    thread = threading.Thread(target=claimer, daemon=True)
    thread.start()
    session = requests.Session()
    sent: dict[str, tuple[float, float]] = {}
    for i in range(jobs):
        if not ready.wait(30):
            raise RuntimeError(f"claimer not ready: {errors}")
        time.sleep(gap)  # let the claim request reach the master and park in its long-poll
        job_id = f"{prefix}-{i:05d}"
        t0 = time.perf_counter()
        t1 = submit(session, submit_url, job_id)
        sent[job_id] = (t0, t1)
        deadline = time.monotonic() + 30
        while job_id not in claimed and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.0005)
        if job_id not in claimed:
            raise RuntimeError(f"job {job_id} was not claimed within 30 s ({errors})")
    stop.set()
    thread.join(timeout=25)
    return latency_figures([(claimed[j] - sent[j][1]) * 1000 for j in sent],
                           [(claimed[j] - sent[j][0]) * 1000 for j in sent])


def latency_figures(lat_resp: list[float], lat_req: list[float]) -> dict:
    """From the POST's answer and from its request to the claim's answer, in ms; the samples kept for merging."""
    return {
        "samples": (lat_resp, lat_req), "n": len(lat_resp),
        "p50_ms": benchlib.percentile(lat_resp, 50), "p99_ms": benchlib.percentile(lat_resp, 99),
        "max_ms": max(lat_resp), "min_ms": min(lat_resp),
        "p50_from_request_ms": benchlib.percentile(lat_req, 50),
        "p99_from_request_ms": benchlib.percentile(lat_req, 99),
    }


# -- phase 2: claims/s with N concurrent claimers ------------------------------------------------

def _claimer_proc(url: str, worker_id: str, go, out, deadline_s: float, max_claims: int) -> None:
    client = make_client(url, worker_id)
    client.register({}, 1, "bench")
    # warm the keep-alive connection so the timed part is claims only
    client.session.get(url + "/healthz", timeout=10)
    out.put(("ready", worker_id, 0, 0.0))
    go.wait(60)
    start = time.time()
    n = 0
    last = start
    err = ""
    while n < max_claims and time.time() - start < deadline_s:  # bounded
        try:
            job = client.claim(wait=0)
        except Exception as exc:  # noqa: BLE001
            err = repr(exc)
            break
        if job is None:
            break
        n += 1
        last = time.time()
    out.put(("done", worker_id, n, last, err))


def phase_throughput(masters: list[benchlib.Master], fill: int, claimers: int, deadline_s: float,
                     database_cpu=lambda: 0.0, prefix: str = "tp") -> dict:
    """Jobs submitted to the masters in turn; claimer k claims from master k mod len(masters). ``database_cpu``:
    the database server's CPU seconds so far (PostgreSQL's processes; SQLite runs inside the master)."""
    session = requests.Session()
    t0 = time.perf_counter()
    for i in range(fill):
        submit(session, masters[i % len(masters)].url, f"{prefix}-{i:06d}")
    fill_s = time.perf_counter() - t0
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer_proc, args=(masters[k % len(masters)].url, f"tp-claimer-{k:02d}", go, out,
                                                     deadline_s, fill), daemon=True) for k in range(claimers)]
    for p in procs:
        p.start()
    try:
        for _ in range(claimers):
            msg = out.get(timeout=60)
            assert msg[0] == "ready", msg
        cpu0, db_cpu0 = sum(benchlib.cpu_seconds(m.pid) for m in masters), database_cpu()
        start = time.time()
        go.set()
        results = []
        for _ in range(claimers):
            results.append(out.get(timeout=deadline_s + 60))
        cpu1, db_cpu1 = sum(benchlib.cpu_seconds(m.pid) for m in masters), database_cpu()
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    total = sum(r[2] for r in results)
    end = max(r[3] for r in results)
    errs = [r[4] for r in results if r[4]]
    elapsed = end - start
    return {"fill": fill, "fill_s": fill_s, "submits_per_s": fill / fill_s, "claimers": claimers,
            "claims": total, "elapsed_s": elapsed, "claims_per_s": total / elapsed if elapsed > 0 else 0.0,
            "master_cpu_s": cpu1 - cpu0, "master_cpu_ms_per_claim": (cpu1 - cpu0) * 1000 / max(total, 1),
            "database_cpu_ms_per_claim": (db_cpu1 - db_cpu0) * 1000 / max(total, 1), "errors": errs[:3]}


# -- claim round trip (PostgreSQL phases) -------------------------------------------------------

def phase_claim_time(submit_url: str, claim_url: str, jobs: int, prefix: str) -> dict:
    """How long a claim that finds a job takes: ``jobs`` jobs queued, then claimed one at a time (``wait=0``);
    each time is the HTTP round trip, the claim statement included."""
    session = requests.Session()
    for i in range(jobs):
        submit(session, submit_url, f"{prefix}-{i:05d}")
    client = make_client(claim_url, f"{prefix}-claimer")
    client.register({}, 1, "bench")
    times = []
    for _ in range(jobs):
        started = time.perf_counter()
        if client.claim(wait=0) is None:
            raise RuntimeError(f"{prefix}: the queue ran dry")
        times.append((time.perf_counter() - started) * 1000)
    return claim_figures(times)


def claim_figures(times: list[float]) -> dict:
    return {"samples": times, "n": len(times), "p50_ms": benchlib.percentile(times, 50),
            "p99_ms": benchlib.percentile(times, 99)}


# -- phase 3: idle master CPU with N waiting pollers ---------------------------------------------

def phase_idle(master: benchlib.Master, claimers: int, seconds: float) -> dict:
    stop = threading.Event()
    polls = [0]
    lock = threading.Lock()

    def poller(k: int) -> None:
        client = make_client(master.url, f"idle-{k:02d}")
        client.register({}, 1, "bench")
        for _ in range(1000):  # bounded; each claim waits up to 20 s
            if stop.is_set():
                return
            try:
                client.claim(wait=20)
            except Exception:  # noqa: BLE001 - the master is stopped under the last poll
                return
            with lock:
                polls[0] += 1

    threads = [threading.Thread(target=poller, args=(k,), daemon=True) for k in range(claimers)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # all registered and parked
    cpu0, w0 = benchlib.cpu_seconds(master.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, w1 = benchlib.cpu_seconds(master.pid), time.monotonic()
    stop.set()
    return {"claimers": claimers, "seconds": w1 - w0, "master_cpu_s": cpu1 - cpu0,
            "idle_master_cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0), "threads": threads}


def run_sqlite(args, profile_dir: Path | None) -> dict:
    """Phases 1-3, each against a fresh master on SQLite; prints the ``dispatch:`` line, returns its figures."""
    with benchlib.temp_workdir("bench-dispatch-") as work:
        results = {}
        for name, fn in (
            ("latency", lambda m: phase_latency(m.url, m.url, args.jobs, args.gap)),
            ("throughput", lambda m: phase_throughput([m], args.fill, args.claimers, args.deadline)),
            ("idle", lambda m: phase_idle(m, args.claimers, args.idle_seconds)),
        ):
            master = start_master(work, name, profile_dir)
            try:
                results[name] = fn(master)
            except Exception:
                print(f"--- master log ({name}) ---\n{master.log_tail()}", file=sys.stderr)
                raise
            finally:
                master.stop()
            threads = results.get(name, {}).pop("threads", [])
            for t in threads:
                t.join(timeout=5)
            show(name, results[name])

    lat, tp, idle = results["latency"], results["throughput"], results["idle"]
    figures = {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "claims_per_s": tp["claims_per_s"],
               "idle_master_cpu_pct": idle["idle_master_cpu_pct"]}
    print_targets([(key, value, *TARGETS[key]) for key, value in figures.items()])
    print("dispatch: " + " ".join(f"{k}={v:.1f}" if k != "idle_master_cpu_pct" else f"{k}={v:.2f}"
                                  for k, v in figures.items()), flush=True)
    return figures


# -- PostgreSQL: two masters, one database ---------------------------------------------------------

HISTORY_BATCH = 100_000
ROUNDS = 4  # latency rounds per table, alternating between the empty table and the long history
HISTORY_SQL = (
    "INSERT INTO jobs (id, status, source_path, output_path, profile, source_size, source_sha256, source_mtime_ns,"
    " output_size, output_sha256, attempts, max_attempts, worker_id, created_at, updated_at, claimed_at,"
    " finished_at) SELECT 'hist-' || i, 'completed', 'src.mp4', 'out/hist-' || i || '.mp4', 'h264-720p', 4096,"
    " repeat('0', 64), 1, 4096, repeat('1', 64), 1, 3, 'bench', t - i, t - i, t - i, t - i"
    " FROM generate_series(CAST(? AS BIGINT), CAST(? AS BIGINT)) AS i, (SELECT CAST(? AS DOUBLE PRECISION) AS t) AS s")


def start_pg_master(workdir: Path, url: str, root: Path) -> benchlib.Master:
    """A ``converter-master`` on the PostgreSQL database ``url``, its files under the shared ``root``."""
    workdir.mkdir(parents=True)
    master = benchlib.Master(workdir, port=benchlib.free_port())
    config = workdir / "master.yaml"
    config.write_text(f"server:\n  host: 127.0.0.1\n  port: {master.port}\nstorage:\n  root: {root}\n"
                      f"database:\n  url: \"{url}\"\n" + MASTER_EXTRA)
    master.log_path = workdir / "master.log"
    with open(master.log_path, "wb") as log:
        master.proc = subprocess.Popen([str(benchlib.VENV_BIN / "converter-master"), "--config", str(config)],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=benchlib.REPO)
    benchlib.wait_http(master.url + "/healthz", proc=master.proc)
    return master


def fill_history(url: str, rows: int) -> float:
    """``rows`` completed jobs, made by the server itself in batches; the seconds it took (VACUUM included)."""
    from master.database import open_database

    db = open_database(url)
    started = time.perf_counter()
    try:
        for first in range(1, rows + 1, HISTORY_BATCH):
            db.execute(HISTORY_SQL, (first, min(first + HISTORY_BATCH - 1, rows), time.time() - 86400))
        db.execute("VACUUM ANALYZE jobs")  # as autovacuum leaves a table long since filled
        db.execute("CHECKPOINT")  # and written out: the fill's write-back is not a cost of the claims measured next
    finally:
        db.close()
    return time.perf_counter() - started


def count_jobs(url: str) -> int:
    from master.database import open_database

    db = open_database(url)
    try:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    finally:
        db.close()


def measure_postgres(pairs: dict[str, list[benchlib.Master]], urls: dict[str, str], database_cpu, args) -> dict:
    """``pairs``: two masters on an empty database and two on one with ``--history`` finished jobs. Their latencies
    are measured in alternating rounds (E H, H E, ...), so both tables see the same load on this shared machine."""
    seconds = fill_history(urls["history"], args.history)
    show("pg history", {"rows": args.history, "fill_s": seconds, "rows_per_s": args.history / seconds})
    latency = {table: ([], []) for table in pairs}
    claims: dict[str, list[float]] = {table: [] for table in pairs}
    for round_ in range(ROUNDS):
        for table in (("empty", "history") if round_ % 2 == 0 else ("history", "empty")):
            a, b = pairs[table]
            result = phase_latency(a.url, b.url, args.jobs // ROUNDS, args.gap, prefix=f"lat-{table}-{round_}")
            for merged, samples in zip(latency[table], result["samples"]):
                merged.extend(samples)
            claims[table] += phase_claim_time(a.url, b.url, args.jobs // ROUNDS, f"claim-{table}-{round_}")["samples"]
    results = {}
    for table in pairs:
        results[table] = latency_figures(*latency[table])
        show(f"pg latency A -> B, {table} table", results[table])
        results[f"claim_{table}"] = claim_figures(claims[table])
        show(f"pg claim round trip on B, {table} table", results[f"claim_{table}"])
    results["sqlite_throughput"], results["throughput"] = compare_throughput(pairs["history"], database_cpu, args)
    results["rows"] = count_jobs(urls["history"])
    return results


def compare_throughput(masters: list[benchlib.Master], database_cpu, args) -> tuple[dict, dict]:
    """Claims/s of a fresh master on SQLite and of ``masters`` on PostgreSQL, in ``--throughput-rounds`` alternating rounds
    (S P, P S, S P, ...) of half ``--fill`` each, so that both see the same load on a shared machine."""
    runs: dict[str, list[dict]] = {"sqlite": [], "postgres": []}
    with benchlib.temp_workdir("bench-dispatch-tp-") as work:
        for round_ in range(args.throughput_rounds):
            for backend in (("sqlite", "postgres") if round_ % 2 == 0 else ("postgres", "sqlite")):
                if backend == "postgres":
                    runs[backend].append(phase_throughput(masters, args.fill // 2, args.claimers, args.deadline,
                                                          database_cpu, prefix=f"tp{round_}"))
                    continue
                master = start_master(work, f"sqlite-{round_}", None)
                try:
                    runs[backend].append(phase_throughput([master], args.fill // 2, args.claimers, args.deadline))
                finally:
                    master.stop()
    merged = {backend: merge_throughput(rounds) for backend, rounds in runs.items()}
    show("throughput, SQLite, 1 master, interleaved", merged["sqlite"])
    show("pg throughput, 2 masters, history table, interleaved", merged["postgres"])
    return merged["sqlite"], merged["postgres"]


def merge_throughput(rounds: list[dict]) -> dict:
    claims, elapsed = sum(r["claims"] for r in rounds), sum(r["elapsed_s"] for r in rounds)
    return {"rounds": [round(r["claims_per_s"], 1) for r in rounds], "claims": claims, "elapsed_s": elapsed,
            "claims_per_s": claims / elapsed,
            "master_cpu_ms_per_claim": sum(r["master_cpu_s"] for r in rounds) * 1000 / claims,
            "database_cpu_ms_per_claim": sum(r["database_cpu_ms_per_claim"] * r["claims"] for r in rounds) / claims,
            "errors": [e for r in rounds for e in r["errors"]][:3]}


def server_cpu(server) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its backends."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    total = 0.0
    for process in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a backend that just ended
            total += benchlib.cpu_seconds(process.pid)
    return total


def run_postgres(args) -> None:
    """Phases 4 and 5 (module docstring); prints the ``dispatch-pg:`` line last."""
    from tests.postgres import PostgreSQL

    print(f"load average before the PostgreSQL phases: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    server = PostgreSQL(Path(tempfile.mkdtemp(prefix="bench-dispatch-pg-")), durable=True).start()
    try:
        with benchlib.temp_workdir("bench-dispatch-masters-") as work:
            urls = {table: server.new_database() for table in ("empty", "history")}
            root = work / "storage"  # one storage root for the masters of a database (local backend)
            root.mkdir()
            (root / "src.mp4").write_bytes(b"\0" * 4096)
            pairs = {table: [start_pg_master(work / f"{table}-{name}", url, root) for name in ("a", "b")]
                     for table, url in urls.items()}
            masters = [master for pair in pairs.values() for master in pair]
            try:
                results = measure_postgres(pairs, urls, lambda: server_cpu(server), args)
            except Exception:
                for master in masters:
                    print(f"--- master log ({master.workdir.name}) ---\n{master.log_tail()}", file=sys.stderr)
                raise
            finally:
                for master in masters:
                    master.stop()
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    history, tp, sqlite_tp = results["history"], results["throughput"], results["sqlite_throughput"]
    claim_empty, claim_history = results["claim_empty"], results["claim_history"]
    print_targets([
        ("p50_ms (A -> B, with history)", history["p50_ms"], "<=", 50.0),
        ("p99_ms (A -> B, with history)", history["p99_ms"], "<=", 250.0),
        ("claims_per_s (2 masters; target: SQLite's)", tp["claims_per_s"], ">=", round(sqlite_tp["claims_per_s"], 1)),
        ("claim p50, history / empty", claim_history["p50_ms"] / claim_empty["p50_ms"], "<=", 2.0),
        ("claim p99, history / empty", claim_history["p99_ms"] / claim_empty["p99_ms"], "<=", 2.0),
    ])
    print(f"dispatch-pg: p50_ms={history['p50_ms']:.1f} p99_ms={history['p99_ms']:.1f}"
          f" claims_per_s={tp['claims_per_s']:.1f} masters=2 rows={results['rows']}")


def show(name: str, result: dict) -> None:
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "samples"}
    print(f"{name}: {shown}", flush=True)


def print_targets(rows: list[tuple[str, float, str, float]]) -> None:
    print()
    print("| figure | value | target | met |")
    print("|---|---|---|---|")
    for key, value, op, target in rows:
        ok = value <= target if op == "<=" else value >= target if op == ">=" else value < target
        print(f"| {key} | {value:.2f} | {op} {target:g} | {'yes' if ok else 'NO'} |")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs for the latency phase (default 200)")
    ap.add_argument("--gap", type=float, default=0.02, help="pause before each submit, s (default 0.02)")
    ap.add_argument("--fill", type=int, default=3000, help="jobs pre-filled for the throughput phase")
    ap.add_argument("--claimers", type=int, default=16)
    ap.add_argument("--throughput-rounds", type=int, default=4, help="alternating SQLite/PostgreSQL rounds (phase 5)")
    ap.add_argument("--deadline", type=float, default=60.0, help="cap on the throughput drain, s")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--profile", metavar="DIR", help="run each master under cProfile, write .prof files to DIR")
    ap.add_argument("--postgres", action="store_true", help="then masters on PostgreSQL (phases 4, 5)")
    ap.add_argument("--history", type=int, default=1_000_000, help="finished jobs added for phase 5")
    args = ap.parse_args(argv)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    print(f"machine: {benchlib.machine_description()}")
    print(f"code: {benchlib.code_state()}")
    run_sqlite(args, profile_dir)
    if args.postgres:
        run_postgres(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
