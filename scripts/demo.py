"""`make demo`: a local master (SQLite) and a local worker convert a generated 1080p clip end to end.

``--keep`` (``make demo DEMO_ARGS=--keep``): the master and the worker stay up afterwards, with the web console at
the printed URL, until Ctrl-C.

`make demo-s3` (``--s3``): the same with the files in an S3 bucket (a SeaweedFS started on loopback): the clip
is put in the bucket, the worker moves the bytes straight to and from it over presigned URLs, and the output
is fetched with ``converterctl download`` (a presigned GET, verified).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from tests.seaweedfs import SeaweedFS  # noqa: E402 - a real S3 server on loopback, for --s3
RUN = HERE / "demo-run"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def main(argv: list[str]) -> int:
    in_bucket = "--s3" in argv
    keep = "--keep" in argv
    shutil.rmtree(RUN, ignore_errors=True)
    storage = RUN / "storage"
    (storage / "incoming").mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s3 = None
    if in_bucket:
        step("starting SeaweedFS (weed mini) on loopback, bucket 'media'")
        s3 = SeaweedFS(RUN / "seaweedfs").start()
    (RUN / "master.yaml").write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port},
        "storage": s3.master_storage(RUN, storage) if s3 else {"root": str(storage)},
        "database": {"path": str(RUN / "converter.db")},
    }))
    (RUN / "worker.yaml").write_text(yaml.safe_dump({
        "master": {"url": url},
        "worker": {"id": "demo-worker", "claim_wait": 5, "metrics_port": 0},
        "storage": {"cache_path": str(RUN / "cache"), "chunk_size": 10 * 1024 * 1024},
    }))

    step("generating a 10 s 1080p test clip (lavfi testsrc2 + sine)")
    source = storage / "incoming" / "demo 1080p.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(source)],
                   check=True)
    if s3 is not None:
        key = f"{yaml.safe_load((RUN / 'master.yaml').read_text())['storage']['s3']['prefix']}/incoming/{source.name}"
        s3.client().upload_file(str(source), s3.bucket, key)
        source.unlink()
        print(f"    put in the bucket as s3://{s3.bucket}/{key}")

    processes = []
    try:
        step(f"starting the master on {url} and one worker (logs in {RUN.relative_to(HERE)}/)")
        for name in ("master", "worker"):
            log = open(RUN / f"{name}.log", "wb")
            processes.append(subprocess.Popen([str(BIN / f"converter-{name}"), "--config", str(RUN / f"{name}.yaml")],
                                              stdout=log, stderr=subprocess.STDOUT))
            if name == "master":
                wait_until(lambda: healthy(url), 15, "the master to start")
                print(f"    web console: {url}/console/ (no tokens on loopback: it opens directly)", flush=True)

        step("submitting the job (profile h264-720p)")
        response = requests.post(f"{url}/api/jobs", json={
            "source_path": "incoming/demo 1080p.mp4", "output_path": "converted/demo 720p.mp4",
            "profile": "h264-720p"}, timeout=10)
        response.raise_for_status()
        job_id = response.json()["id"]
        print(f"    curl {url}/api/jobs/{job_id}")

        job = wait_until(lambda: finished(url, job_id), 300, "the job to finish")
        print(json.dumps({k: job[k] for k in ("id", "status", "profile", "source_path", "output_path", "source_size",
                                              "output_size", "output_sha256", "attempts", "worker_id", "accel",
                                              "conversion_seconds", "speed", "error")}, indent=2))
        print(f"    queued→claimed {job['claimed_at'] - job['created_at']:.2f} s, "
              f"claimed→completed {job['finished_at'] - job['claimed_at']:.2f} s")
        if job["status"] != "completed":
            print("demo: the job did not complete; see demo-run/*.log", file=sys.stderr)
            return 1

        step("ffprobe of the output")
        output = storage / job["output_path"]
        if s3 is not None:
            output = RUN / "demo 720p.mp4"
            subprocess.run([str(BIN / "converterctl"), "--url", url, "download", job_id, "-o", str(output)],
                           check=True)
        subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                        "stream=codec_type,codec_name,width,height:format=duration,size", "-of", "compact",
                        str(output)], check=True)
        leftovers = list((RUN / "cache").iterdir())
        print(f"    worker cache entries left: {len(leftovers)}")
        if keep:
            step(f"--keep: the master and the worker stay up; web console at {url}/console/ (Ctrl-C stops them)")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if not leftovers else 1
    finally:
        step("stopping the worker and the master")
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        if s3 is not None:
            s3.stop()


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.ConnectionError:
        return False


def finished(url: str, job_id: str):
    job = requests.get(f"{url}/api/jobs/{job_id}", timeout=5).json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
