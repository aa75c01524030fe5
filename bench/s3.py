#!/usr/bin/env python3
"""make bench-s3: our worker's transfers with an S3 bucket (master ``storage.backend: s3``) vs boto3, on loopback.

The store is a real SeaweedFS (``weed mini``, ``tests/seaweedfs.py``) on this machine. One random file
(``--size``, default 2 GiB), pairs interleaved (A B C, then C B A, ...), medians of ``--runs`` (default 5). Rows:

* dl_vs_boto3: our worker's download of a claimed job's source (``MasterClient.download_from_bucket``: a
  presigned GET from the master, one stream, SHA-256 verified while it arrives against the digest the master
  recorded) vs boto3 ``download_file`` (``TransferConfig`` defaults: 8 MiB ranged GETs, 10 threads) to the same
  disk, then ``sha256sum`` of the file. Ratio = their time / our time.
* up_vs_boto3: our worker's upload of a claimed job's output (``MasterClient.upload_to_bucket``: one hashing
  pass, whole file + each part; POST /api/worker/output-parts; one presigned PUT per part, each signed with its
  ``x-amz-checksum-sha256``; POST /api/worker/output-complete, where the master joins the parts and completes
  the job) vs ``sha256sum`` of the file FIRST (a client needs the digest to state it), then boto3 ``upload_file``
  (defaults: 8 MiB parts, 10 threads, botocore's default CRC checksums) with the digest as ``x-amz-meta-sha256``.
* dl_vs_local / up_vs_local (informative): the same worker against a master with the local backend (its default
  download, and its default upload protocol, tus) = local-backend time / s3 time (> 1: the bucket is faster).

Each of our upload runs is a fresh job (POST /api/jobs, claimed with POST /api/worker/claim) with an output path
of its own; every uploaded object is deleted after its run and SeaweedFS vacuumed between runs.

Also: the s3 master's CPU time during our s3 transfers / their wall time (% of one core: it only hands out URLs
and keeps the books), peak RSS of the s3 master (psutil sampling, 20 ms; both masters run in an environment
holding only the master's packages, ``benchlib.master_only_python``, as a deployment has) and of the process
running our worker client (``/usr/bin/time -v``; the client runs in a subprocess of its own), CPU seconds per
GiB by process.
Prints the machine, tables and, last, one line
``s3: dl_vs_boto3=.. up_vs_boto3=.. master_cpu_pct_during_transfer=.. master_rss_mb=.. worker_rss_mb=.. ...``.

Big files live under bench/out/ (or ``--workdir``) and are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from transfer import fmt_row, parse_size, sha256_speed, steal_seconds, upload_protocol  # noqa: E402

sys.path.insert(0, str(benchlib.REPO))

MB = 1e6
MiB = 1 << 20
WORKER_ID = "bench-worker"
LEASE = 7200
PROFILE = "h264-720p"
TARGETS = {"dl_vs_boto3": 1.0, "up_vs_boto3": 1.0}
MASTER_CPU_TARGET_PCT = 5.0
RSS_TARGET_MB = 64


# ============================================================================================
# Hidden modes: one transfer in a process of its own (run under /usr/bin/time -v)
# ============================================================================================

def worker_op(args: argparse.Namespace) -> int:
    """One transfer with the worker's own MasterClient, configured like ``converter-worker`` by default."""
    from worker.client import MasterClient
    from worker.config import load_config
    from worker.retry import RetryPolicy

    cfg = load_config(None)
    client = MasterClient(args.url, args.worker_id, retry=RetryPolicy(attempts=1, base_delay=0),
                          chunk_size=cfg.storage.chunk_size, download_timeout=cfg.storage.download_timeout,
                          upload_timeout=cfg.storage.upload_timeout, progress_interval=3600,
                          direct_io=cfg.storage.direct_io)
    path = Path(args.path)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.worker_op == "s3-download":
        n = client.download_from_bucket(args.job, path)
    elif args.worker_op == "s3-upload":
        n = client.upload_to_bucket(args.job, path, args.part_size)
    elif args.worker_op == "local-download":
        n = client.download_source_video(args.job, path)
    elif args.worker_op == "local-upload":
        protocol = upload_protocol(argparse.Namespace(upload_protocol=None))
        n = (client.upload_resumable if protocol == "tus" else client.upload_converted_video)(args.job, path)
    else:
        raise SystemExit(f"unknown worker op {args.worker_op}")
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "bytes": n,
                      "cpu": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}))
    return 0


def boto3_op(args: argparse.Namespace) -> int:
    """One boto3 ``download_file`` / ``upload_file`` with the default TransferConfig (credentials from the env)."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=args.url, region_name="us-east-1",
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.boto3_op == "download":
        s3.download_file(args.bucket, args.key, args.path)
    elif args.boto3_op == "upload":
        s3.upload_file(args.path, args.bucket, args.key, ExtraArgs={"Metadata": {"sha256": args.sha256}})
    else:
        raise SystemExit(f"unknown boto3 op {args.boto3_op}")
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "bytes": os.path.getsize(args.path),
                      "cpu": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}))
    return 0


# ============================================================================================
# The harness
# ============================================================================================

class Harness:
    def __init__(self, args: argparse.Namespace, work: Path):
        from tests.seaweedfs import SeaweedFS

        self.args = args
        self.work = work
        self.size = args.size
        self.src = work / "src.bin"
        self.seaweed = SeaweedFS(work / "seaweedfs")
        self.masters: list[benchlib.Master] = []
        self.samplers: list[benchlib.RssSampler] = []
        self.results: dict[str, list[float]] = {}
        self.cpu: dict[str, dict[str, list[float]]] = {}  # row -> process -> CPU seconds per run
        self.client_rss: dict[str, int] = {}  # row -> peak RSS of its client process
        self.master_cpu_s3 = 0.0  # s3 master CPU seconds during our s3 transfers
        self.wall_s3 = 0.0  # and their wall time
        self.seq = 0
        self.checked: set[str] = set()  # rows whose output was compared byte for byte once

    # -- setup ------------------------------------------------------------------------------------

    def make_source(self) -> None:
        h = hashlib.sha256()
        remaining = self.size
        with open(self.src, "wb", buffering=0) as f:
            while remaining > 0:
                block = os.urandom(min(1 << 24, remaining))
                h.update(block)
                f.write(block)
                remaining -= len(block)
        self.src_sha = h.hexdigest()
        os.sync()

    def start_all(self) -> None:
        import yaml

        (self.work / "seaweedfs").mkdir()
        self.seaweed.start()
        self.s3 = self.seaweed.client()
        self.weed_pid = self.seaweed._proc.pid
        self.weed_master = next(a.split("=", 1)[1] for a in self.seaweed._proc.args if a.startswith("-master.port="))
        self.boto3_env = {**os.environ, "AWS_ACCESS_KEY_ID": self.seaweed.access_key,
                          "AWS_SECRET_ACCESS_KEY": self.seaweed.secret_key}
        # master S: the bucket backend; the source object carries its SHA-256 (x-amz-meta-sha256) as a client's would
        self.m_s3 = benchlib.Master(self.work / "master-s3", extra_config=f"jobs:\n  lease_seconds: {LEASE}\n",
                                    python=benchlib.master_only_python())
        self.m_s3.storage.mkdir(parents=True)
        storage = self.seaweed.master_storage(self.m_s3.workdir, self.m_s3.storage, part_size=self.args.part_size)
        self.prefix = storage["s3"]["prefix"]
        section = yaml.safe_dump({k: v for k, v in storage.items() if k != "root"}, sort_keys=False)
        self.m_s3.storage_extra = "".join(f"  {line}\n" for line in section.splitlines())
        self.s3.upload_file(str(self.src), self.seaweed.bucket, f"{self.prefix}/src.bin",
                            ExtraArgs={"Metadata": {"sha256": self.src_sha}})
        self.m_s3.start()
        self.masters.append(self.m_s3)
        # master L: the local backend, its source a hard link of src.bin
        self.m_local = benchlib.Master(self.work / "master-local", extra_config=f"jobs:\n  lease_seconds: {LEASE}\n",
                                       python=benchlib.master_only_python())
        self.m_local.storage.mkdir(parents=True)
        os.link(self.src, self.m_local.storage / "src.bin")
        self.m_local.start()
        self.masters.append(self.m_local)
        self.rss_s3 = benchlib.RssSampler(self.m_s3.pid).__enter__()
        self.rss_local = benchlib.RssSampler(self.m_local.pid).__enter__()
        self.samplers += [self.rss_s3, self.rss_local]
        self.idle_rss_s3 = self.rss_s3.peak
        # the download jobs: created and claimed once, they stay processing (long lease) for every download run
        self.dl_job_s3, claim = self.new_job(self.m_s3, "dl")
        self.part_size = int(claim["bucket"]["part_size"])
        self.dl_job_local, _ = self.new_job(self.m_local, "dl")

    def new_job(self, master: benchlib.Master, tag: str) -> tuple[str, dict]:
        """Submit a job (POST /api/jobs) with an output path of its own and claim it as WORKER_ID."""
        import requests
        self.seq += 1
        output = f"out/{tag}-{self.seq:04d}.mp4"
        r = requests.post(master.url + "/api/jobs", json={"source_path": "src.bin", "output_path": output,
                                                          "profile": PROFILE}, timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"create job: {r.status_code} {r.text[:300]}")
        job_id = r.json()["id"]
        r = requests.post(master.url + "/api/worker/claim", json={"worker_id": WORKER_ID, "wait": 5}, timeout=60)
        if r.status_code != 200 or r.json()["id"] != job_id:
            raise RuntimeError(f"claim job {job_id}: {r.status_code} {r.text[:300]}")
        claim = r.json()
        if master is self.m_s3 and not isinstance(claim.get("bucket"), dict):
            raise RuntimeError(f"the s3 master's claim has no bucket: {claim}")
        return job_id, claim

    def stop_all(self) -> None:
        for sampler in self.samplers:
            sampler.__exit__(None, None, None)
        for m in self.masters:
            m.stop()
        self.seaweed.stop()

    # -- measuring ---------------------------------------------------------------------------------

    def proc_cpu(self) -> dict[str, float]:
        return {"master_s3": benchlib.cpu_seconds(self.m_s3.pid),
                "master_local": benchlib.cpu_seconds(self.m_local.pid), "store": benchlib.cpu_seconds(self.weed_pid)}

    def run_client(self, row: str, cmd: list[str], env: dict[str, str] | None = None) -> float:
        """Run one client process under /usr/bin/time -v; its own seconds (from its first request), CPU and RSS."""
        before = self.proc_cpu()
        r = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, *cmd], capture_output=True, text=True,
                           timeout=1800, env=env)
        after = self.proc_cpu()
        if r.returncode != 0:
            raise RuntimeError(f"{row} failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-2000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        if m:
            self.client_rss[row] = max(self.client_rss.get(row, 0), int(m.group(1)) * 1024)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        if out["bytes"] != self.size:
            raise RuntimeError(f"{row}: {out['bytes']} bytes, expected {self.size}")
        cpu = self.cpu.setdefault(row, {})
        cpu.setdefault("client", []).append(out["cpu"])
        master = "master_local" if row.startswith("local") else "master_s3"
        for proc in (master, "store"):
            cpu.setdefault(proc, []).append(after[proc] - before[proc])
        if row.startswith("ours"):
            self.master_cpu_s3 += after["master_s3"] - before["master_s3"]
            self.wall_s3 += out["seconds"]  # the transfer's own time, from its first request to the master
        return out["seconds"]

    def worker(self, row: str, op: str, master: benchlib.Master, job: str, path: Path) -> float:
        return self.run_client(row, ["--worker-op", op, "--url", master.url, "--worker-id", WORKER_ID, "--job", job,
                                     "--path", str(path), "--part-size", str(self.part_size)])

    def boto3(self, row: str, op: str, key: str, path: Path, sha256: str = "") -> float:
        return self.run_client(row, ["--boto3-op", op, "--url", self.seaweed.endpoint, "--bucket", self.seaweed.bucket,
                                     "--key", key, "--path", str(path), "--sha256", sha256], env=self.boto3_env)

    def sha256sum(self, row: str, path: Path) -> tuple[float, str]:
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=900, check=True)
        t = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.setdefault(row, {}).setdefault("sha256sum", []).append(
            cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
        return t, r.stdout.split()[0]

    def openssl_dgst(self, row: str, path: Path) -> None:
        """Informative: the same digest with ``openssl dgst`` (OpenSSL's SHA-256, ~6x coreutils 9.1's here)."""
        t0 = time.perf_counter()
        r = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)], capture_output=True, text=True,
                           timeout=900, check=True)
        if r.stdout.split()[0] != self.src_sha:
            raise RuntimeError(f"openssl dgst {path}: {r.stdout[:80]}")
        self.results.setdefault(f"{row}_openssl_only", []).append(time.perf_counter() - t0)

    @staticmethod
    def fresh(path: Path) -> None:
        path.unlink(missing_ok=True)
        os.sync()

    def check_file(self, row: str, path: Path) -> None:
        if row in self.checked:
            return
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while block := f.read(1 << 22):
                h.update(block)
        if h.hexdigest() != self.src_sha:
            raise RuntimeError(f"{row}: output differs from the source (sha256 {h.hexdigest()})")
        self.checked.add(row)

    def delete_object(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.seaweed.bucket, Key=key)

    def vacuum(self) -> None:
        """Let SeaweedFS give back the space of deleted objects (not timed)."""
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{self.weed_master}/vol/vacuum?garbageThreshold=0.01",
                                   timeout=600).read()

    # -- one run of each row (seconds) ---------------------------------------------------------------

    def ours_dl(self) -> float:
        out = self.work / "dl-ours.bin"
        self.fresh(out)
        t = self.worker("ours_dl", "s3-download", self.m_s3, self.dl_job_s3, out)
        self.check_file("ours_dl", out)
        out.unlink()
        return t

    def boto3_dl(self) -> float:
        out = self.work / "dl-boto3.bin"
        self.fresh(out)
        t = self.boto3("boto3_dl", "download", f"{self.prefix}/src.bin", out)
        self.results.setdefault("boto3_dl_only", []).append(t)
        t_sum, digest = self.sha256sum("boto3_dl", out)
        if digest != self.src_sha:
            raise RuntimeError(f"boto3 download: sha256 {digest}, expected {self.src_sha}")
        self.openssl_dgst("boto3_dl", out)
        out.unlink()
        return t + t_sum

    def local_dl(self) -> float:
        out = self.work / "dl-local.bin"
        self.fresh(out)
        t = self.worker("local_dl", "local-download", self.m_local, self.dl_job_local, out)
        self.check_file("local_dl", out)
        out.unlink()
        return t

    def ours_up(self) -> float:
        import requests
        job, claim = self.new_job(self.m_s3, "up")
        os.sync()
        t = self.worker("ours_up", "s3-upload", self.m_s3, job, self.src)
        stored = requests.get(f"{self.m_s3.url}/api/jobs/{job}", timeout=30).json()
        if stored["status"] != "completed" or stored.get("output_size") not in (None, self.size):
            raise RuntimeError(f"the s3 master did not complete the upload: {stored}")
        key = f"{self.prefix}/{claim['output_path']}"
        head = self.s3.head_object(Bucket=self.seaweed.bucket, Key=key)
        if head["ContentLength"] != self.size:
            raise RuntimeError(f"stored output is {head['ContentLength']} bytes")
        self.delete_object(key)
        return t

    def boto3_up(self) -> float:
        key = f"{self.prefix}/boto3-up-{self.seq:04d}.bin"
        self.seq += 1
        os.sync()
        t_sum, digest = self.sha256sum("boto3_up", self.src)
        self.openssl_dgst("boto3_up", self.src)
        t = self.boto3("boto3_up", "upload", key, self.src, digest)
        self.results.setdefault("boto3_up_only", []).append(t)
        head = self.s3.head_object(Bucket=self.seaweed.bucket, Key=key)
        if head["ContentLength"] != self.size:
            raise RuntimeError(f"boto3 stored {head['ContentLength']} bytes")
        self.delete_object(key)
        return t + t_sum

    def local_up(self) -> float:
        job, claim = self.new_job(self.m_local, "up")
        dest = self.m_local.storage / claim["output_path"]
        os.sync()
        t = self.worker("local_up", "local-upload", self.m_local, job, self.src)
        self.check_file("local_up", dest)
        dest.unlink()
        return t

    def series(self) -> None:
        groups = [[("ours_dl", self.ours_dl), ("boto3_dl", self.boto3_dl)],
                  [("ours_up", self.ours_up), ("boto3_up", self.boto3_up)]]
        if not self.args.no_local:
            groups[0].append(("local_dl", self.local_dl))
            groups[1].append(("local_up", self.local_up))
        # warm-up (not counted): page cache of the source and of the object, first-touch, connections
        self.ours_dl()
        self.boto3_dl()
        self.results.clear()
        self.cpu.clear()
        self.client_rss.clear()
        self.master_cpu_s3 = self.wall_s3 = 0.0
        for run in range(self.args.runs):
            for group in groups:
                for key, fn in (group if run % 2 == 0 else list(reversed(group))):
                    self.results.setdefault(key, []).append(fn())
            self.vacuum()
            print(f"  run {run + 1}/{self.args.runs} done", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=2 << 30, help="file size (default 2G; e.g. 256M)")
    ap.add_argument("--runs", type=int, default=5, help="interleaved runs per figure (default 5)")
    ap.add_argument("--workdir", default=str(benchlib.REPO / "bench" / "out"),
                    help="where the big files go (default bench/out); a temp dir inside it is removed at the end")
    ap.add_argument("--part-size", type=parse_size, default=64 * MiB,
                    help="the master's storage.s3.part_size (default 64M as the master's; 16M measured no faster)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-backend rows")
    ap.add_argument("--worker-op", help=argparse.SUPPRESS)
    ap.add_argument("--boto3-op", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--worker-id", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--bucket", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--sha256", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_op:
        return worker_op(args)
    if args.boto3_op:
        return boto3_op(args)

    for tool in ("sha256sum", "openssl", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"bench-s3 needs {tool}")
    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    size = args.size
    print(f"machine: {benchlib.machine_description()}")
    sha256_mbps = sha256_speed()
    print(f"sha256 (hashlib) on this machine: {sha256_mbps:.0f} MB/s")
    print(f"code: {benchlib.code_state()}")
    weed_version = subprocess.run([str(benchlib.VENV_BIN / "weed"), "version"], capture_output=True,
                                  text=True).stdout.split("\n")[0].strip()
    import boto3
    steal_at_start, wall_at_start = steal_seconds(), time.monotonic()
    with benchlib.temp_workdir("bench-s3-", str(base)) as work:
        h = Harness(args, work)
        local_protocol = upload_protocol(argparse.Namespace(upload_protocol=None))
        try:
            h.make_source()
            h.start_all()
            print(f"file: {size} bytes of /dev/urandom in {work}; runs={args.runs}; store: SeaweedFS {weed_version} "
                  f"(weed mini); boto3 {boto3.__version__}; master storage.s3.part_size={args.part_size} "
                  f"(claim: {h.part_size}); local upload protocol={local_protocol}",
                  flush=True)
            h.series()
            rss_master_s3, rss_master_local = h.rss_s3.peak, h.rss_local.peak
        finally:
            h.stop_all()

    R = h.results
    med = {k: benchlib.median(v) for k, v in R.items()}
    steal_share = (steal_seconds() - steal_at_start) / ((time.monotonic() - wall_at_start) * (os.cpu_count() or 1))
    print()
    print("| row | runs | median s | MB/s (median) | MB/s min–max | what |")
    print("|---|---|---|---|---|---|")
    print(fmt_row("ours dl: bucket → disk", R["ours_dl"], size,
                  "download_from_bucket: presigned GET, SHA-256 verified"))
    print(fmt_row("boto3 download_file + sha256sum", R["boto3_dl"], size, "TransferConfig defaults"))
    print(fmt_row("  of which download_file", R["boto3_dl_only"], size, ""))
    print(fmt_row("  (sha256sum alone)", [a - b for a, b in zip(R["boto3_dl"], R["boto3_dl_only"])], size,
                  "coreutils"))
    print(fmt_row("  (openssl dgst alone)", R["boto3_dl_openssl_only"], size, "informative, not in the row"))
    if "local_dl" in R:
        print(fmt_row("ours dl: local master → disk", R["local_dl"], size, "download_source_video"))
    print(fmt_row("ours up: disk → bucket", R["ours_up"], size,
                  f"upload_to_bucket: hash pass + {h.part_size >> 20} MiB part PUTs + complete"))
    print(fmt_row("sha256sum + boto3 upload_file", R["boto3_up"], size, "TransferConfig defaults"))
    print(fmt_row("  of which upload_file", R["boto3_up_only"], size, ""))
    print(fmt_row("  (openssl dgst alone)", R["boto3_up_openssl_only"], size, "informative, not in the row"))
    if "local_up" in R:
        print(fmt_row("ours up: disk → local master", R["local_up"], size, "the worker's default protocol"))

    ratios = {"dl_vs_boto3": med["boto3_dl"] / med["ours_dl"], "up_vs_boto3": med["boto3_up"] / med["ours_up"]}
    spreads = {"dl_vs_boto3": [t / o for o, t in zip(R["ours_dl"], R["boto3_dl"])],
               "up_vs_boto3": [t / o for o, t in zip(R["ours_up"], R["boto3_up"])]}
    # the same peers with openssl dgst instead of sha256sum (coreutils 9.1's SHA-256 has no SHA-NI path)
    extra = {"dl_vs_boto3_openssl": (med["boto3_dl_only"] + med["boto3_dl_openssl_only"]) / med["ours_dl"],
             "up_vs_boto3_openssl": (med["boto3_up_only"] + med["boto3_up_openssl_only"]) / med["ours_up"]}
    if "local_dl" in R:
        extra |= {"dl_vs_local": med["local_dl"] / med["ours_dl"], "up_vs_local": med["local_up"] / med["ours_up"]}
    master_cpu_pct = 100 * h.master_cpu_s3 / h.wall_s3 if h.wall_s3 else float("nan")
    rss_worker = max(v for k, v in h.client_rss.items() if k.startswith("ours"))
    gib = size / (1 << 30)

    print()
    procs = ["client", "sha256sum", "master_s3", "master_local", "store"]
    print("| CPU seconds per GiB (median) | " + " | ".join(procs) + " |")
    print("|---|" + "---|" * len(procs))
    for row, cpu in h.cpu.items():
        cells = []
        for proc in procs:
            key = proc if proc in cpu else None
            cells.append(f"{benchlib.median(cpu[key]) / gib:.2f}" if key else "–")
        print(f"| {row} | " + " | ".join(cells) + " |")
    print()
    print("| figure | value (median) | min–max over the pairs | target | met |")
    print("|---|---|---|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} | {min(spreads[k]):.2f}–{max(spreads[k]):.2f} | >= {TARGETS[k]} | "
              f"{'yes' if v >= TARGETS[k] else 'NO'} |")
    for k, v in extra.items():
        what = "local-backend time / s3 time" if "local" in k else "boto3 + openssl dgst instead of sha256sum"
        print(f"| {k} ({what}) | {v:.2f} | – | – | – |")
    print(f"| s3 master CPU during our s3 transfers, % of one core | {master_cpu_pct:.2f} | – | "
          f"< {MASTER_CPU_TARGET_PCT:.0f} | {'yes' if master_cpu_pct < MASTER_CPU_TARGET_PCT else 'NO'} |")
    print(f"| s3 master peak RSS MB (idle at start {h.idle_rss_s3 / MB:.1f}) | {rss_master_s3 / MB:.1f} | – | "
          f"<= {RSS_TARGET_MB} | {'yes' if rss_master_s3 / MB <= RSS_TARGET_MB else 'NO'} |")
    print(f"| worker peak RSS MB (s3 transfers) | {rss_worker / MB:.1f} | – | <= {RSS_TARGET_MB} | "
          f"{'yes' if rss_worker / MB <= RSS_TARGET_MB else 'NO'} |")
    by_row = ", ".join(f"{row} {v / MB:.1f}" for row, v in sorted(h.client_rss.items()))
    print(f"| client peak RSS MB by row | {by_row} | – | – | – |")
    print(f"| local master peak RSS MB | {rss_master_local / MB:.1f} | – | – | – |")
    print()
    cpu_model = benchlib.machine_description().split(", ", 1)[0]
    print("s3: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items())
          + f" master_cpu_pct_during_transfer={master_cpu_pct:.2f} master_rss_mb={rss_master_s3 / MB:.1f}"
          f" worker_rss_mb={rss_worker / MB:.1f}"
          + "".join(f" {k}={v:.2f}" for k, v in extra.items())
          + " spread " + " ".join(f"{k}={min(v):.2f}-{max(v):.2f}" for k, v in spreads.items())
          + f" part_size_mib={h.part_size >> 20} sha256_mbps={sha256_mbps:.0f} steal={steal_share:.0%}"
          f" load15={os.getloadavg()[2]:.1f}"
          f" cpu={cpu_model!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
