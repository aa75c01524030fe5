#!/usr/bin/env python3
"""How closely the bandwidth limits hold (issue 3): worker download/upload limits and the master's outbound total.

For each limit: one worker download (verified, to disk) with ``transfer.download_limit``, one tus upload with
``transfer.upload_limit`` (timed from the first PATCH byte: the pre-hash is excluded), and ``--streams`` curl
downloads at once from a master with ``server.outbound_limit`` (aggregate rate). Each transfer moves
``--seconds`` × limit bytes. Prints achieved MB/s and the error against the limit, over the whole transfer
(request to response: includes the request setup and, for uploads, the master's fsync and commit) and, for
the worker rows, over the body alone (first to last chunk, from the client's progress callbacks).
Usage: ``.venv/bin/python bench/bandwidth.py [--limits 25M,100M] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib  # noqa: E402
from transfer import parse_size  # noqa: E402

MB = 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", default="25M,100M", help="comma-separated bytes/s (M = 10^6 here)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--workdir", default=str(benchlib.REPO / "bench" / "out"))
    args = ap.parse_args()
    import requests
    from worker.client import MasterClient
    from worker.retry import RetryPolicy

    limits = [int(float(x.rstrip("M")) * MB) if x.endswith("M") else parse_size(x) for x in args.limits.split(",")]
    print(f"machine: {benchlib.machine_description()}")
    print(f"code: {benchlib.code_state()}")
    print("| what | limit MB/s | bytes | seconds | achieved MB/s | error | body only: MB/s (error) |")
    print("|---|---|---|---|---|---|---|")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with benchlib.temp_workdir("bench-bw-", args.workdir) as work:
        for limit in limits:
            size = int(limit * args.seconds)
            src = work / "src.mkv"
            src.write_bytes(os.urandom(size))
            m = benchlib.Master(work / f"m{limit}", extra_config="jobs:\n  lease_seconds: 600\n")
            m.storage.mkdir(parents=True, exist_ok=True)
            os.link(src, m.storage / "src.mkv")
            m.start()
            seq = iter(range(1000))

            def job(master) -> str:
                job_id = f"bw-{next(seq)}"
                requests.post(master.url + "/api/jobs", json={"id": job_id, "source_path": "src.mkv", "output_path":
                              f"out/{job_id}.mkv", "profile": "h264-720p"}, timeout=10).raise_for_status()
                requests.post(master.url + "/api/worker/claim", json={"worker_id": "bw", "wait": 0}, timeout=10)
                return job_id

            def row(what: str, n: int, seconds: float, body: tuple[int, float] | None = None) -> None:
                rate = n / seconds
                body_rate = "–" if body is None else (f"{body[0] / body[1] / MB:.2f} "
                                                       f"({100 * (body[0] / body[1] / limit - 1):+.1f} %)")
                print(f"| {what} | {limit / MB:.0f} | {n} | {seconds:.3f} | {rate / MB:.2f} | "
                      f"{100 * (rate / limit - 1):+.1f} % | {body_rate} |", flush=True)

            try:
                job_id = job(m)
                client = MasterClient(m.url, "bw", retry=RetryPolicy(1, 0, 2, 0), progress_interval=3600,
                                      download_limit=limit, upload_limit=limit)
                chunks = _watch_chunks(client)
                t0 = time.monotonic()
                n = client.download_source_video(job_id, work / "dl.mkv")
                row("worker download (transfer.download_limit)", n, time.monotonic() - t0, _body(chunks))
                (work / "dl.mkv").unlink()
                job_id = job(m)
                chunks.clear()
                t0 = time.monotonic()
                n = _tus_upload(client, job_id, src)
                row("worker tus upload (transfer.upload_limit)", n, time.monotonic() - t0, _body(chunks))
            finally:
                m.stop()
            # the master's outbound limit, shared by several downloads at once
            m = benchlib.Master(work / f"o{limit}", extra_config="jobs:\n  lease_seconds: 600\n",
                                server_extra=f"  outbound_limit: {limit}\n")
            m.storage.mkdir(parents=True, exist_ok=True)
            os.link(src, m.storage / "src.mkv")
            m.start()
            try:
                jobs = [job(m) for _ in range(args.streams)]
                t0 = time.monotonic()
                procs = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "-H",
                                           "X-Worker-Id: bw", f"{m.url}/api/worker/download-video?job_id={j}"],
                                          stdout=subprocess.PIPE, text=True) for j in jobs]
                n = sum(int(p.communicate(timeout=600)[0] or 0) for p in procs)
                row(f"master outbound, {args.streams} downloads at once (server.outbound_limit)", n,
                    time.monotonic() - t0)
            finally:
                m.stop()
    return 0


def _watch_chunks(client) -> list[tuple[float, int]]:
    """Record (time, bytes) of every chunk the client's transfers report to their progress."""
    chunks: list[tuple[float, int]] = []
    make = client._progress

    def progress(direction, job_id, total):
        p = make(direction, job_id, total)
        inner = p.on_bytes
        p.on_bytes = lambda n: (chunks.append((time.monotonic(), n)), inner(n))
        return p

    client._progress = progress
    return chunks


def _body(chunks: list[tuple[float, int]]) -> tuple[int, float]:
    """Bytes after the first chunk, and the time from the first chunk to the last."""
    return sum(n for _, n in chunks[1:]), chunks[-1][0] - chunks[0][0]


def _tus_upload(client, job_id: str, path: Path) -> int:
    """MasterClient.upload_resumable with the pre-hash outside the timing (it is not rate-limited)."""
    from converter_common.digest import file_sha256
    from worker.client import TusUpload
    upload = TusUpload(path, path.stat().st_size, file_sha256(path))
    return client._tus_attempt(job_id, upload, None)


if __name__ == "__main__":
    sys.exit(main())
