"""Shared helpers of the benchmarks in bench/: a real master process, RSS/CPU sampling, statistics.

Nothing here is imported by the product code; the scripts run as ``.venv/bin/python bench/<name>.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s ({last})")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
    """Stop one process that this script started, by its pid: signal, wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


@dataclass
class Master:
    """A real ``converter-master`` process on a loopback port with its own temp DB and storage."""

    workdir: Path
    extra_config: str = ""
    port: int = 0
    host: str = "127.0.0.1"
    server_extra: str = ""  # more lines of the server: section, e.g. "  outbound_limit: 1000000\n"
    storage_extra: str = ""  # more lines of the storage: section, e.g. "  backend: s3\n  s3:\n    bucket: b\n"
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", "ns") to run it in a network namespace
    script: Path | None = None  # run this Python script (taking --config) instead of converter-master
    python: Path | None = None  # run the master with this interpreter (e.g. ``master_only_python()``)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, env: dict[str, str] | None = None, profile_to: Path | None = None) -> "Master":
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "master.yaml"
        config.write_text(
            "server:\n"
            f"  host: {self.host}\n"
            f"  port: {self.port}\n"
            + self.server_extra +
            f"storage:\n  root: {self.storage}\n"
            + self.storage_extra +
            f"database:\n  path: {self.workdir / 'converter.db'}\n"
            + self.extra_config
        )
        self.log_path = self.workdir / f"master-{self.port}.log"
        log = open(self.log_path, "wb")
        exe = VENV_BIN / "converter-master"
        cmd = [str(exe), "--config", str(config)] if exe.exists() else [
            sys.executable, "-c", "import sys; from master.main import main; sys.exit(main(sys.argv[1:]))",
            "--config", str(config)]
        if self.script is not None:
            cmd = [sys.executable, str(self.script), "--config", str(config)]
        if self.python is not None:  # the code of this checkout (cwd), the packages of that environment
            cmd = [str(self.python), "-c", "import sys; from master.main import main; sys.exit(main(sys.argv[1:]))",
                   "--config", str(config)]
        if profile_to is not None:  # cProfile writes the file when the master exits on SIGINT
            code = ("import cProfile, sys; from master.main import main; "
                    "cProfile.run('main(sys.argv[2:])', sys.argv[1])")
            cmd = [sys.executable, "-c", code, str(profile_to), "--config", str(config)]
        cmd = [*self.prefix, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **(env or {})})
        log.close()
        wait_http(self.url + "/healthz", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def master_only_python(directory: Path = REPO / "bench" / "out" / "venv-master") -> Path:
    """The Python of a virtual environment holding only what a deployed master has (``pyproject.toml``: the
    dependencies and the ``master`` extra), made once and kept: a master's memory measured in the development
    venv would count the test and bench packages too (boto3, which smart_open imports when it is installed)."""
    import tomllib

    python = directory / "bin" / "python"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = sorted(project["dependencies"] + project["optional-dependencies"]["master"])
    stamp = directory / "requirements.txt"
    if python.exists() and stamp.exists() and stamp.read_text().splitlines() == wanted:
        return python
    shutil.rmtree(directory, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not make {directory}:\n{pip.stdout}{pip.stderr}")
    stamp.write_text("\n".join(wanted) + "\n")
    return python


class RssSampler:
    """Peak RSS of one pid (and optionally its children), sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02, children: bool = False):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.children = children
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        rss = self.proc.memory_info().rss
        if self.children:
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._rss()
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        with contextlib.suppress(psutil.Error):
            self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._rss())


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_description() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = psutil.virtual_memory().total / (1 << 30)
    kernel = os.uname().release
    return f"{os.cpu_count()} vCPU {cpu}, {mem_gib:.0f} GiB RAM, kernel {kernel}, Python {sys.version.split()[0]}"


def code_state() -> str:
    """The commit measured, and whether master/ worker/ converter_common/ had uncommitted edits."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "master", "worker", "converter_common")
    n = len(dirty.splitlines()) if dirty else 0
    return f"HEAD {head}" + (f" + {n} uncommitted file(s) in master/ worker/ converter_common/" if n else " (clean)")


@contextlib.contextmanager
def temp_workdir(prefix: str, base: str | None = None):
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
