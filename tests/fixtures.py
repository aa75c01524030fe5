"""Builders shared by the tests: configs, a master on a loopback port in a thread, clips, processes."""

from __future__ import annotations

import asyncio
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
        self.store = JobStore(config.database.path)
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

    def __init__(self, script: str, config: Path, log: Path, env: dict[str, str] | None = None):
        self.log = log
        self._log_file = open(log, "wb")
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
