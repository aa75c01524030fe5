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

Prints, last, exactly one line ``dispatch: p50_ms=.. p99_ms=.. claims_per_s=.. idle_master_cpu_pct=..``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
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

def phase_latency(master: benchlib.Master, jobs: int, gap: float) -> dict:
    client = make_client(master.url, "lat-claimer")
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
        job_id = f"lat-{i:05d}"
        t0 = time.perf_counter()
        t1 = submit(session, master.url, job_id)
        sent[job_id] = (t0, t1)
        deadline = time.monotonic() + 30
        while job_id not in claimed and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.0005)
        if job_id not in claimed:
            raise RuntimeError(f"job {job_id} was not claimed within 30 s ({errors})")
    stop.set()
    thread.join(timeout=25)
    lat_resp = [(claimed[j] - sent[j][1]) * 1000 for j in sent]
    lat_req = [(claimed[j] - sent[j][0]) * 1000 for j in sent]
    return {
        "n": len(lat_resp),
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


def phase_throughput(master: benchlib.Master, fill: int, claimers: int, deadline_s: float) -> dict:
    session = requests.Session()
    t0 = time.perf_counter()
    for i in range(fill):
        submit(session, master.url, f"tp-{i:06d}")
    fill_s = time.perf_counter() - t0
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer_proc, args=(master.url, f"tp-claimer-{k:02d}", go, out, deadline_s, fill),
                         daemon=True) for k in range(claimers)]
    for p in procs:
        p.start()
    try:
        for _ in range(claimers):
            msg = out.get(timeout=60)
            assert msg[0] == "ready", msg
        cpu0 = benchlib.cpu_seconds(master.pid)
        start = time.time()
        go.set()
        results = []
        for _ in range(claimers):
            results.append(out.get(timeout=deadline_s + 60))
        cpu1 = benchlib.cpu_seconds(master.pid)
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
            "errors": errs[:3]}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs for the latency phase (default 200)")
    ap.add_argument("--gap", type=float, default=0.02, help="pause before each submit, s (default 0.02)")
    ap.add_argument("--fill", type=int, default=3000, help="jobs pre-filled for the throughput phase")
    ap.add_argument("--claimers", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=60.0, help="cap on the throughput drain, s")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--profile", metavar="DIR", help="run each master under cProfile, write .prof files to DIR")
    args = ap.parse_args(argv)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    print(f"machine: {benchlib.machine_description()}")
    print(f"code: {benchlib.code_state()}")
    with benchlib.temp_workdir("bench-dispatch-") as work:
        results = {}
        for name, fn in (
            ("latency", lambda m: phase_latency(m, args.jobs, args.gap)),
            ("throughput", lambda m: phase_throughput(m, args.fill, args.claimers, args.deadline)),
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
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[name].items()}
            print(f"{name}: {shown}", flush=True)

    lat, tp, idle = results["latency"], results["throughput"], results["idle"]
    figures = {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "claims_per_s": tp["claims_per_s"],
               "idle_master_cpu_pct": idle["idle_master_cpu_pct"]}
    print()
    print(f"| figure | value | target | met |")
    print(f"|---|---|---|---|")
    for key, value in figures.items():
        op, target = TARGETS[key]
        ok = value <= target if op == "<=" else value >= target if op == ">=" else value < target
        print(f"| {key} | {value:.2f} | {op} {target:g} | {'yes' if ok else 'NO'} |")
    print()
    print("dispatch: " + " ".join(f"{k}={v:.1f}" if k != "idle_master_cpu_pct" else f"{k}={v:.2f}"
                                  for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
