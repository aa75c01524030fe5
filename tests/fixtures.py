"""Builders shared by the tests: configs, a master on a loopback port in a thread, clips, processes."""

from __future__ import annotations

import asyncio
import hashlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from master.app import RunningMaster, start_master
from master.auth import Tokens
from master.config import DatabaseConfig, JobsConfig, MasterConfig, ServerConfig, StorageConfig
from master.store import JobStore
from worker.client import MasterClient
from worker.config import FfmpegSection, MasterSection, RetrySection, StorageSection, WorkerConfig, WorkerSection
from worker.retry import RetryPolicy

VENV_BIN = Path(sys.executable).parent
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, factor=2.0, cap=0.1)


def master_config(tmp: Path, **jobs: Any) -> MasterConfig:
    return MasterConfig(
        server=ServerConfig(host="127.0.0.1", port=0),
        storage=StorageConfig(root=tmp / "storage"),
        database=DatabaseConfig(path=tmp / "master.db"),
        jobs=dataclasses.replace(JobsConfig(lease_seconds=5.0, retry_delay=0.0, max_claim_wait=5.0), **jobs),
    )


def worker_config(tmp: Path, master_url: str, worker_id: str = "w1", **worker: Any) -> WorkerConfig:
    return WorkerConfig(
        master=MasterSection(url=master_url),
        worker=dataclasses.replace(WorkerSection(id=worker_id, claim_wait=1.0, heartbeat_interval=0.5,
                                                 progress_interval=1.0), **worker),
        storage=StorageSection(cache_path=tmp / f"cache-{worker_id}", chunk_size=1 << 20),
        retry=RetrySection(attempts=3, base_delay=0.01, factor=2.0, cap=0.1),
        ffmpeg=FfmpegSection(timeout=120.0),
    )


class ThreadedMaster:
    """The real master (``start_master``) served from its own IOLoop in a background thread."""

    def __init__(self, config: MasterConfig, tokens: Tokens = Tokens()):
        self.config = config
        self.tokens = tokens
        config.storage.root.mkdir(parents=True, exist_ok=True)
        self.root = config.storage.root
        self.store = JobStore(config.database.location())
        self._loop = asyncio.new_event_loop()
        self._running: RunningMaster | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self._running.port}"

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._running = start_master(self.config, self.store, tokens=self.tokens)

        self._loop.run_until_complete(start())
        started.set()
        self._loop.run_forever()
        self._running.stop()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.store.close()

    @property
    def metrics(self):
        return self._running.metrics

    @property
    def wakeup(self):
        """What long-polling claims wait on and a new pending job signals (tests wrap its ``wait`` to see a
        claim parked)."""
        return self._running.wakeup

    def requests_in_progress(self) -> int:
        """Requests whose handler has not ended yet (each runs as a task named after ``_execute``)."""
        async def count() -> int:
            return sum(task.get_coro().__qualname__.endswith("._execute") for task in asyncio.all_tasks())
        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(10)

    # conveniences for tests
    def submit(self, source: str, output: str, job_id: str | None = None, profile: str = "h264-720p") -> requests.Response:
        body = {"source_path": source, "output_path": output, "profile": profile}
        if job_id:
            body["id"] = job_id
        return requests.post(f"{self.url}/api/jobs", json=body, timeout=10)

    def job(self, job_id: str) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/jobs/{job_id}", timeout=10).json()

    def claim(self, worker_id: str = "tester") -> dict[str, Any] | None:
        response = requests.post(f"{self.url}/api/worker/claim", json={"worker_id": worker_id, "wait": 0}, timeout=10)
        return None if response.status_code == 204 else response.json()

    def job_with_token(self, job_id: str, token: str) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).json()

    def client(self, worker_id: str = "tester", retry: RetryPolicy = FAST_RETRY, token: str | None = None
               ) -> MasterClient:
        return MasterClient(self.url, worker_id, retry=retry, progress_interval=0.5, token=token)


def make_clip(path: Path, seconds: float = 2.0, size: str = "1920x1080", audio: bool = True, rate: int = 25) -> Path:
    """A real H.264/AAC clip made by FFmpeg from lavfi test sources."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]
    if audio:
        command += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    command += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        command += ["-c:a", "aac"]
    subprocess.run(command + [str(path)], check=True, timeout=120)
    return path


HDR10_MASTERING = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"  # P3 D65, 1000 cd/m²
HDR10_LIGHT_LEVEL = (1000, 400)  # MaxCLL, MaxFALL


def make_hdr10_clip(path: Path, seconds: float = 1.0, size: str = "320x180", rate: int = 10) -> Path:
    """HEVC Main10 HDR10: PQ, BT.2020, mastering display and content light level SEI (libx265 ``hdr10``).

    A bright scene: white at the 1000 cd/m² mastering peak around a ``testsrc2`` inset, so a tone-mapped
    SDR output reaches SDR white while the washed-out one (PQ code values shown as BT.709) stays grey."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = (int(n) for n in size.split("x"))
    to_pq = "zscale=tin=bt709:min=bt709:pin=bt709:rin=tv:t=smpte2084:m=bt2020nc:p=bt2020:r=tv:npl=1000"
    x265 = "log-level=error:hdr10=1:master-display={}:max-cll={},{}".format(HDR10_MASTERING, *HDR10_LIGHT_LEVEL)
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=white:s={size}:r={rate}",
               "-f", "lavfi", "-i", f"testsrc2=size={width // 2}x{height // 2}:rate={rate}", "-t", str(seconds),
               "-filter_complex",
               f"[0][1]overlay={width // 4}:{height // 4},format=yuv420p,{to_pq},format=yuv420p10le",
               "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", x265,
               "-color_primaries", "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc", str(path)]
    subprocess.run(command, check=True, timeout=120)
    return path


# lavapipe (software Vulkan) itself very rarely segfaults in a filter the probe found working: once in a CI run, 0 in
# 410 runs of every Vulkan-form profile here, 4 and 6 at a time. The worker then rightly reruns the job on the CPU;
# a test of the Vulkan form runs it again, up to this many times, so a filter that crashes every time still fails.
LAVAPIPE_TRIES = 3


def lavapipe_crashed(fallback: str | None) -> bool:
    """Whether a Vulkan run's fallback reason (``ConversionResult.fallback``, a job's ``vulkan_fallback``) is a
    segfault."""
    return (fallback or "").endswith("signal 11")


def ffprobe(path: Path) -> dict[str, Any]:
    result = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                             str(path)], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


class Process:
    """A console script of ours run as a real process, its output kept in a log file."""

    def __init__(self, script: str, config: Path, log: Path, env: dict[str, str] | None = None,
                 append: bool = False):
        self.log = log
        self._log_file = open(log, "ab" if append else "wb")
        self.popen = subprocess.Popen([str(VENV_BIN / script), "--config", str(config)], stdout=self._log_file,
                                      stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


_CLAIMED_PORTS: list[int] = []  # lock files held for the life of this test process


def free_port() -> int:
    """A loopback port for a process to bind later, that nothing else on this machine takes meanwhile.

    Picking a port with ``bind(0)`` and closing it races with every other ``bind(0)``: under pytest-xdist a
    test's own server once got the port a master process of another test was still starting on. So the
    port comes from below the kernel's ephemeral range (no ``bind(0)`` hands it out) and is claimed with a
    lock file that this process holds until it exits (no other test process picks it).
    """
    import fcntl
    import random
    import socket
    import tempfile

    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    claims = Path(tempfile.gettempdir()) / "converter-test-ports"
    claims.mkdir(exist_ok=True)
    while True:
        port = random.randint(10_000, ephemeral_low - 1)
        fd = os.open(claims / str(port), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # in use by something that is not a test of ours
                os.close(fd)
                continue
        _CLAIMED_PORTS.append(fd)
        return port


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


class Cluster:
    """A real master process and real worker processes, with the knobs fault tests need."""

    def __init__(self, tmp: Path, *, storage_root: Path | None = None, bucket=None, s3: dict | None = None,
                 watch: dict | None = None, database: dict | None = None, profiles: dict | list | None = None,
                 **jobs: Any):
        self.tmp = tmp
        self.root = storage_root or tmp / "storage"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[Process] = []
        # bucket: a tests.seaweedfs.SeaweedFS; the master then keeps its files there, under a prefix of its own
        self.storage = bucket.master_storage(tmp, self.root, **(s3 or {})) if bucket else {"root": str(self.root)}
        self.bucket = BucketView(bucket, self.storage["s3"]["prefix"]) if bucket else None
        self.master_config = write_yaml(tmp / "master.yaml", {
            "server": {"host": "127.0.0.1", "port": self.port},
            "storage": self.storage,
            "database": database or {"path": str(tmp / "master.db")},
            "jobs": {"lease_seconds": 5, "retry_delay": 0, "max_claim_wait": 5, **jobs},
            **({"watch": watch} if watch else {}),
            **({"profiles": profiles} if profiles is not None else {}),  # configured profiles (docs/api.md)
        })
        self.master = self._start_master()

    def _start_master(self) -> Process:
        process = Process("converter-master", self.master_config, self.tmp / "master.log", append=True)
        wait_for(self._up, what="master to listen")
        return process

    def restart_master(self, sig: int = signal.SIGKILL) -> None:
        self.master.signal(sig)
        self.master.wait(30)
        self.master.stop()
        self.master = self._start_master()

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    def add_worker(self, worker_id: str = "w1", ffmpeg_binary: str = "ffmpeg", concurrency: int = 1, *,
                   master_url: str | None = None, cache_path: Path | None = None, retry: dict | None = None,
                   ffmpeg_timeout: float = 120, storage: dict | None = None, **worker: Any) -> Process:
        metrics_port = free_port()
        config = write_yaml(self.tmp / f"{worker_id}.yaml", {
            "master": {"url": master_url or self.url},
            "worker": {"id": worker_id, "claim_wait": 2, "heartbeat_interval": 1, "concurrency": concurrency,
                       "metrics_host": "127.0.0.1", "metrics_port": metrics_port, **worker},
            "storage": {"cache_path": str(cache_path or self.tmp / f"cache-{worker_id}"), **(storage or {})},
            "retry": retry or {"attempts": 3, "base_delay": 0.05, "factor": 2, "cap": 0.5},
            "ffmpeg": {"binary": ffmpeg_binary, "timeout": ffmpeg_timeout},
        })
        process = Process("converter-worker", config, self.tmp / f"{worker_id}.log")
        process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.workers.append(process)
        return process

    def submit(self, source: str, output: str, job_id: str, profile: str = "h264-720p") -> None:
        response = requests.post(f"{self.url}/api/jobs", json={"id": job_id, "source_path": source,
                                                               "output_path": output, "profile": profile}, timeout=30)
        assert response.status_code == 201, response.text

    def put_source(self, relative: str, source: Path, *, with_digest: bool = False) -> None:
        """A file in the master's storage, as a user would put it there: a copy, or an object (``with_digest``:
        carrying its SHA-256 in ``x-amz-meta-sha256``, so the master need not read it to learn it)."""
        if self.bucket is not None:
            data = source.read_bytes()
            self.bucket.put(relative, data, {"sha256": hashlib.sha256(data).hexdigest()} if with_digest else None)
        else:
            (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.root / relative)

    def stored(self, relative: str) -> bytes | None:
        """The bytes at ``relative`` in the master's storage; None when nothing is there."""
        if self.bucket is not None:
            return self.bucket.get(relative)
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None

    def job(self, job_id: str) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/jobs/{job_id}", timeout=10).json()

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        def reached():
            job = self.job(job_id)
            return job if job["status"] in statuses else None
        return wait_for(reached, timeout, what=f"job {job_id} to be {'/'.join(statuses)}")

    def stop(self) -> None:
        for process in reversed(self.workers):
            process.stop()
        self.master.stop()


class BucketView:
    """What a test sees of a cluster's bucket: the objects under the master's prefix."""

    def __init__(self, server, prefix: str) -> None:
        self.server, self.prefix = server, prefix
        self.client = server.client()

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def put(self, relative: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.client.put_object(Bucket=self.server.bucket, Key=self.key(relative), Body=data, Metadata=metadata or {})

    def get(self, relative: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.server.bucket, Key=self.key(relative))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def metadata(self, relative: str) -> dict[str, str]:
        return self.client.head_object(Bucket=self.server.bucket, Key=self.key(relative))["Metadata"]

    def open_uploads(self) -> list[str]:
        response = self.client.list_multipart_uploads(Bucket=self.server.bucket, Prefix=self.prefix + "/")
        return [upload["Key"] for upload in response.get("Uploads", [])]

    def keys(self) -> list[str]:
        response = self.client.list_objects_v2(Bucket=self.server.bucket, Prefix=self.prefix + "/")
        return sorted(o["Key"][len(self.prefix) + 1:] for o in response.get("Contents", []))


def stub_ffmpeg(directory: Path, *, hang_when: str = "") -> str:
    """An FFmpeg wrapper that injects a hang (fault injection): conversions whose arguments contain
    ``hang_when`` never finish and record their pid in ``<directory>/stub.pid``; everything else
    (other jobs, the worker's capability probe) runs the real FFmpeg."""
    stub = directory / "ffmpeg-stub"
    stub.write_text("#!/bin/sh\n"
                    f'case " $* " in *" -progress "*{hang_when}*|*{hang_when}*" -progress "*) ;; '
                    '*) exec ffmpeg "$@" ;; esac\n'
                    f"echo $$ > {directory}/stub.pid\nexec sleep 600\n")
    stub.chmod(0o755)
    return str(stub)


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def start_request(base_url: str, method: str, target: str, headers: dict[str, str], body_start: bytes = b""):
    """Open a raw connection and send a request line, headers and the first part of a body, no more:
    a client that is slow, declares more than it sends, or is about to be cut (fault injection)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": "x", **headers}.items())
    sock.sendall(f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + body_start)
    return sock


def claim_in_race(stores: list[JobStore], per_store: int) -> dict[str, list[str]]:
    """``per_store`` threads on each of ``stores`` (masters) claiming at once until nothing is left; the ids each
    claimer got, in order."""
    claimed: dict[tuple[int, str], list[str]] = {(m, f"m{m}w{w}"): [] for m in range(len(stores))
                                                 for w in range(per_store)}

    def claimer(key: tuple[int, str]) -> None:
        while (job := stores[key[0]].claim_next(key[1], 30)) is not None:
            claimed[key].append(job.id)

    threads = [threading.Thread(target=claimer, args=(key,)) for key in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: ids for (_, name), ids in claimed.items()}
