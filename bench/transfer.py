#!/usr/bin/env python3
"""make bench-transfer: our master + worker client against nginx + curl + openssl, on loopback (issue 3).

One run, one random file (``--size``, default 2 GiB), pairs interleaved (A B A B ...), medians of ``--runs``
(>= 5) runs. Rows:

* dl_verify: our worker's download to disk (SHA-256 verified while streaming once the code has it) vs nginx
  (Debian defaults: sendfile on) -> ``curl -o`` to the same disk -> ``openssl dgst -sha256``.
* up_verify: our worker's upload to our master (stored on disk) vs ``curl -T`` to nginx WebDAV PUT on the same
  disk -> ``openssl dgst -sha256`` of the stored file.
* dl_raw: our download into a null sink vs nginx (``sendfile off; output_buffers 2 1m``) -> ``curl -o /dev/null``.
* up_raw: our upload (the worker's tus PATCH, no digest) into a master whose received bodies go to /dev/null
  unhashed (``bench/null_master.py``: the real master with a null ``receive_writer``) vs ``curl -T`` into a
  minimal socket sink (64 KiB recv, discards).

Also: peak RSS of master (psutil sampling, 20 ms) and worker (``/usr/bin/time -v``), the master's RSS under a slow
reader (``curl --limit-rate 100M``), ``GET /api/jobs`` latency (50 requests) while a transfer runs, and the CPU
seconds per GiB each side used (client: the worker or curl + openssl; server: our master or nginx / the sink).
Ratio = their time / our time; each ratio's spread is its min-max over the interleaved pairs. Prints the
machine (CPU model, its SHA-256 speed, the share of CPU the hypervisor stole during the run), tables and, last,
one line ``ratios: dl_verify=.. up_verify=.. dl_raw=.. up_raw=.. rss_master_mb=.. rss_worker_mb=.. spread
dl_verify=lo-hi .. sha256_mbps=.. steal=..% cpu='..'``.

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
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

MB = 1e6
WORKER_ID = "bench-worker"
LEASE = 7200
TARGETS = {"dl_verify": 1.2, "up_verify": 1.3, "dl_raw": 0.8, "up_raw": 0.8}
RSS_TARGET_MB = 64
SLOW_READER_TARGET_MB = 20
JOBS_P95_TARGET_MS = 50


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 2G, 512M, 1048576)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def multipart_body_class():
    """The worker's streamed multipart body (it moved from worker.multipart to worker.bodies)."""
    try:
        from converter_client.request_bodies import MultipartFileBody
    except ImportError:
        from worker.multipart import MultipartFileBody
    return MultipartFileBody


def upload_protocol(args: argparse.Namespace) -> str:
    """What ``converter-worker`` uses by default: storage.upload_protocol (tus or multipart) where it exists."""
    if args.upload_protocol:
        return args.upload_protocol
    from worker.client import MasterClient
    from worker.config import load_config
    default = getattr(load_config(None).storage, "upload_protocol", "multipart")
    return "tus" if default == "tus" and hasattr(MasterClient, "upload_resumable") else "multipart"


def code_has_digest() -> bool:
    r = subprocess.run(["git", "grep", "-n", "Repr-Digest", "master", "worker"], cwd=benchlib.REPO,
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool(r.stdout.strip())


# ============================================================================================
# Hidden modes: the worker side (run in its own process, under /usr/bin/time -v) and the socket sink
# ============================================================================================

def worker_op(args: argparse.Namespace) -> int:
    """One transfer with the worker's own MasterClient, configured like ``converter-worker`` by default."""
    from worker.client import MasterClient
    from worker.config import load_config
    from worker.retry import RetryPolicy

    cfg = load_config(None)  # the shipped defaults (chunk_size etc.), only URL and id are ours
    client = MasterClient(args.url, args.worker_id, retry=RetryPolicy(attempts=1, base_delay=0),
                          chunk_size=args.worker_chunk_size or cfg.storage.chunk_size, download_timeout=cfg.storage.download_timeout,
                          upload_timeout=cfg.storage.upload_timeout, progress_interval=3600,
                          direct_io=cfg.storage.direct_io)
    path = Path(args.path)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.worker_op == "download":
        n = client.download_source_video(args.job, path)
    elif args.worker_op == "upload":
        protocol = upload_protocol(args)
        if protocol == "tus":
            n = client.upload_resumable(args.job, path)
        else:
            n = client.upload_converted_video(args.job, path)
    elif args.worker_op == "download-loop":
        # the client's own loop (same session/adapter/chunk size), bytes discarded, nothing verified
        n = 0
        with client.session.get(f"{args.url}/api/worker/download-video", params={"job_id": args.job},
                                stream=True, timeout=(10, 600)) as r:
            r.raise_for_status()
            for chunk in r.iter_content(client.chunk_size):
                n += len(chunk)
    elif args.worker_op == "upload-loop":
        MultipartFileBody = multipart_body_class()
        body = MultipartFileBody(path, "video", path.name)
        try:
            r = client.session.post(f"{args.url}/api/worker/upload-video", params={"job_id": args.job}, data=body,
                                    headers={"Content-Type": body.content_type}, timeout=(10, 600))
        finally:
            body.close()
        r.raise_for_status()
        n = r.json()["size"]
    elif args.worker_op == "upload-loop-tus":
        # the client's tus PATCH (same session, FileRangeBody) without the pre-hash / sha256 metadata
        import base64
        from converter_client.request_bodies import FileRangeBody
        tus = {"Tus-Resumable": "1.0.0"}
        size = path.stat().st_size
        r = client.session.post(f"{args.url}/api/uploads", timeout=(10, 600), headers={
            **tus, "Upload-Length": str(size), "Upload-Metadata": f"job_id {base64.b64encode(args.job.encode()).decode()}"})
        r.raise_for_status()
        body = FileRangeBody(path, 0, size)
        try:
            r = client.session.patch(args.url + r.headers["Location"], data=body, timeout=(10, 600), headers={
                **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        finally:
            body.close()
        r.raise_for_status()
        n = int(r.headers["Upload-Offset"])
    elif args.worker_op == "upload-sink":
        # the client's multipart body + session, sent to the socket sink (client-side cost only)
        MultipartFileBody = multipart_body_class()
        body = MultipartFileBody(path, "video", path.name)
        try:
            r = client.session.post(args.url, data=body, headers={"Content-Type": body.content_type},
                                    timeout=(10, 600))
        finally:
            body.close()
        n = int(r.text.strip() or 0)
    else:
        raise SystemExit(f"unknown worker op {args.worker_op}")
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)  # the transfer's, without the interpreter's start
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(json.dumps({"seconds": seconds, "bytes": n, "cpu": cpu}))
    return 0


def serve_sink(port: int) -> int:
    """A minimal HTTP sink: read headers, answer 100-continue, recv_into a 64 KiB buffer, reply with the count."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    buf = bytearray(64 * 1024)
    view = memoryview(buf)
    while True:
        conn, _ = srv.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(65536)
                if not data:
                    break
                head += data
            header, _, rest = head.partition(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            got = len(rest)
            while got < length:
                n = conn.recv_into(view)
                if not n:
                    break
                got += n
            body = f"{got}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


# ============================================================================================
# The harness
# ============================================================================================

NGINX_CONF = """\
worker_processes 1;
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {dav}/.body-temp;
    proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    # Debian's stock settings: sendfile on, tcp_nopush on
    server {{
        listen 127.0.0.1:{port_default};
        root {root};
        sendfile on; tcp_nopush on;
        location / {{ }}
    }}
    # the note's fastest loopback download settings
    server {{
        listen 127.0.0.1:{port_raw};
        root {root};
        sendfile off; output_buffers 2 1m;
        location / {{ }}
    }}
    # WebDAV PUT onto the same disk
    server {{
        listen 127.0.0.1:{port_dav};
        root {dav};
        client_max_body_size 0;
        location / {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r; }}
    }}
}}
"""


class Harness:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.size = args.size
        self.src = work / "src.bin"
        self.procs: list[subprocess.Popen] = []
        self.masters: list[benchlib.Master] = []
        self.results: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}
        self.worker_rss: list[int] = []
        self.worker_rss_by_op: dict[str, int] = {}
        self.errors: list[str] = []
        self.digest = code_has_digest()
        self.seq = 0
        self.cpu = 0.0  # CPU seconds counted by counting_cpu during the current measurement
        self.cpu_per_key: dict[str, list[float]] = {}

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

    def start_master(self, name: str, storage_base: Path, script: Path | None = None) -> benchlib.Master:
        workdir = storage_base / name
        m = benchlib.Master(workdir, extra_config=f"jobs:\n  lease_seconds: {LEASE}\n", script=script)
        m.storage.mkdir(parents=True, exist_ok=True)
        self.masters.append(m)
        return m

    def start_all(self) -> None:
        # master A: storage on the same disk as everything else; its source is a hard link of src.bin
        self.m_disk = self.start_master("master-disk", self.work)
        os.link(self.src, self.m_disk.storage / "src.bin")
        self.m_disk.start()
        # master B: the real master with a null sink and no hashing, for the raw upload
        self.m_null = self.start_master("master-null", self.work, script=Path(__file__).with_name("null_master.py"))
        (self.m_null.storage / "src.bin").write_bytes(b"\0" * 4096)
        self.m_null.start()
        self.rss_disk = benchlib.RssSampler(self.m_disk.pid).__enter__()
        self.rss_null = benchlib.RssSampler(self.m_null.pid).__enter__()
        self.idle_rss_disk = self.rss_disk.peak
        # the download job: created and claimed once, it stays processing (long lease) for every download run
        self.dl_job = self.new_job(self.m_disk, "dl")
        # nginx
        self.nginx_tmp = self.work / "nginx"
        self.dav = self.work / "dav"
        (self.dav / ".body-temp").mkdir(parents=True)
        self.nginx_tmp.mkdir()
        self.port_ng, self.port_ng_raw, self.port_dav = (benchlib.free_port() for _ in range(3))
        conf = self.nginx_tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.nginx_tmp, dav=self.dav, root=self.m_disk.storage,
                                          port_default=self.port_ng, port_raw=self.port_ng_raw,
                                          port_dav=self.port_dav))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.nginx_tmp), "-e",
                                       str(self.nginx_tmp / "error.log")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(self.nginx)
        benchlib.wait_http(f"http://127.0.0.1:{self.port_ng}/src.bin", proc=self.nginx, timeout=10)
        # socket sink
        self.port_sink = benchlib.free_port()
        self.sink = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(self.port_sink)])
        self.procs.append(self.sink)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port_sink), timeout=1):
                break
            time.sleep(0.05)
        # the /dev/null symlink for the client's raw download (its error path unlinks the *link*, not /dev/null)
        self.null_link = self.work / "null-sink"
        self.null_link.symlink_to("/dev/null")

    def new_job(self, master: benchlib.Master, tag: str) -> str:
        import requests
        self.seq += 1
        job_id = f"{tag}-{self.seq:04d}"
        r = requests.post(master.url + "/api/jobs", json={"id": job_id, "source_path": "src.bin",
                                                          "output_path": f"out/{job_id}.mp4",
                                                          "profile": "h264-720p"}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"create job: {r.status_code} {r.text[:200]}")
        r = requests.post(master.url + "/api/worker/claim", json={"worker_id": WORKER_ID, "wait": 0}, timeout=30)
        if r.status_code != 200 or r.json()["id"] != job_id:
            raise RuntimeError(f"claim job {job_id}: {r.status_code} {r.text[:200]}")
        return job_id

    def stop_all(self) -> None:
        for sampler in (getattr(self, "rss_disk", None), getattr(self, "rss_null", None)):
            if sampler is not None:
                sampler.__exit__(None, None, None)
        for m in self.masters:
            m.stop()
        for p in self.procs:
            benchlib.stop_process(p, signal.SIGTERM if p is not getattr(self, "nginx", None) else signal.SIGQUIT)

    # -- single measurements (each returns seconds) --------------------------------------------------

    def run_worker(self, op: str, master: benchlib.Master, job: str, path: Path) -> float:
        cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--worker-op", op, "--url", master.url,
               "--worker-id", WORKER_ID, "--job", job, "--path", str(path)]
        if self.args.worker_chunk_size:
            cmd += ["--worker-chunk-size", str(self.args.worker_chunk_size)]
        if self.args.upload_protocol:
            cmd += ["--upload-protocol", self.args.upload_protocol]
        with self.counting_cpu([master.pid] if master.proc is not None else [self.sink.pid], client=False):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        if m:
            self.worker_rss.append(int(m.group(1)) * 1024)
            self.worker_rss_by_op[op] = max(self.worker_rss_by_op.get(op, 0), int(m.group(1)) * 1024)
        if r.returncode != 0:
            raise RuntimeError(f"worker {op} failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-1500:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.cpu += out["cpu"]
        if out["bytes"] != self.size and op != "upload-sink":
            raise RuntimeError(f"worker {op}: {out['bytes']} bytes, expected {self.size}")
        return out["seconds"]

    def curl(self, *args: str) -> tuple[float, int]:
        with self.counting_cpu(self.peer_pids()):
            r = subprocess.run(["curl", "-sS", "-w", "%{time_total} %{http_code} %{size_download} %{size_upload}",
                                *args], capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"curl {' '.join(args)}: rc={r.returncode} {r.stderr[-500:]}")
        total, code, down, up = r.stdout.split()[-4:]
        if not code.startswith("2"):
            raise RuntimeError(f"curl {' '.join(args)}: HTTP {code}")
        return float(total), int(float(down)) or int(float(up))

    def openssl_dgst(self, path: Path) -> float:
        t0 = time.perf_counter()
        with self.counting_cpu([]):
            r = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)], capture_output=True, text=True,
                               timeout=900)
        t = time.perf_counter() - t0
        if r.returncode != 0 or r.stdout.split()[0] != self.src_sha:
            raise RuntimeError(f"openssl dgst {path}: rc={r.returncode} {r.stdout[:100]} (expected {self.src_sha})")
        return t

    @contextlib.contextmanager
    def counting_cpu(self, server_pids: list[int], client: bool = True):
        """Add the CPU ``server_pids`` and (with ``client``) this process's children use meanwhile to ``self.cpu``
        (our worker reports its own, without its interpreter's start)."""
        children, server = children_cpu(), process_cpu(server_pids)
        try:
            yield
        finally:
            self.cpu += process_cpu(server_pids) - server + (children_cpu() - children if client else 0.0)

    def peer_pids(self) -> list[int]:
        """nginx (master and workers) and the socket sink."""
        pids = [self.nginx.pid, self.sink.pid]
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{self.nginx.pid}/task/{self.nginx.pid}/children").read_text().split()]
        return pids

    @staticmethod
    def fresh(path: Path) -> None:
        path.unlink(missing_ok=True)
        os.sync()

    def check_once(self, key: str, path: Path) -> None:
        """Byte-exact check (sha256) of the first output of each to-disk row."""
        if key in self.notes.get("_checked", ""):
            return
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while block := f.read(1 << 22):
                h.update(block)
        if h.hexdigest() != self.src_sha:
            raise RuntimeError(f"{key}: output differs from the source (sha256 {h.hexdigest()})")
        self.notes["_checked"] = self.notes.get("_checked", "") + " " + key

    # ours / theirs, one run each
    def ours_dl(self) -> float:
        out = self.work / "dl-ours.bin"
        self.fresh(out)
        t = self.run_worker("download", self.m_disk, self.dl_job, out)
        self.check_once("ours_dl", out)
        if not self.digest:  # informative: what verifying afterwards would add today
            self.results.setdefault("ours_dl_then_openssl", []).append(t + self.openssl_dgst(out))
        out.unlink()
        return t

    def theirs_dl(self) -> float:
        out = self.work / "dl-curl.bin"
        self.fresh(out)
        t, n = self.curl("-o", str(out), f"http://127.0.0.1:{self.port_ng}/src.bin")
        assert n == self.size, n
        self.results.setdefault("theirs_dl_curl_only", []).append(t)
        t += self.openssl_dgst(out)
        out.unlink()
        return t

    def ours_up(self) -> float:
        job = self.new_job(self.m_disk, "up")
        dest = self.m_disk.storage / "out" / f"{job}.mp4"
        os.sync()
        t = self.run_worker("upload", self.m_disk, job, self.src)
        self.check_once("ours_up", dest)
        dest.unlink()
        return t

    def theirs_up(self) -> float:
        dest = self.dav / "up.bin"
        self.fresh(dest)
        t, n = self.curl("-T", str(self.src), "-o", "/dev/null", f"http://127.0.0.1:{self.port_dav}/up.bin")
        self.results.setdefault("theirs_up_curl_only", []).append(t)
        if dest.stat().st_size != self.size:
            raise RuntimeError("nginx DAV stored a short file")
        t += self.openssl_dgst(dest)
        dest.unlink()
        return t

    def ours_dl_raw(self) -> float:
        if self.digest:
            return self.run_worker("download-loop", self.m_disk, self.dl_job, self.null_link)
        return self.run_worker("download", self.m_disk, self.dl_job, self.null_link)

    def theirs_dl_raw(self) -> float:
        t, n = self.curl("-o", "/dev/null", f"http://127.0.0.1:{self.port_ng_raw}/src.bin")
        assert n == self.size, n
        return t

    def ours_up_raw(self) -> float:
        job = self.new_job(self.m_null, "upraw")
        dest = self.m_null.storage / "out" / f"{job}.mp4"
        op = ("upload-loop-tus" if upload_protocol(self.args) == "tus" else "upload-loop") if self.digest else "upload"
        t = self.run_worker(op, self.m_null, job, self.src)
        import requests
        stored = requests.get(f"{self.m_null.url}/api/jobs/{job}", timeout=30).json()
        if stored["status"] != "completed" or stored.get("output_size") != self.size:
            raise RuntimeError(f"null master did not complete the upload: {stored}")
        dest.unlink()
        return t

    def theirs_up_raw(self) -> float:
        t, n = self.curl("-T", str(self.src), "-o", "/dev/null", f"http://127.0.0.1:{self.port_sink}/up")
        return t

    def worker_client_to_sink(self) -> float:
        return self.run_worker("upload-sink", benchlib.Master(self.work, port=self.port_sink), "-", self.src)

    # -- series ------------------------------------------------------------------------------------

    def series(self) -> None:
        pairs = [("ours_dl", self.ours_dl, "theirs_dl", self.theirs_dl),
                 ("ours_up", self.ours_up, "theirs_up", self.theirs_up),
                 ("ours_dl_raw", self.ours_dl_raw, "theirs_dl_raw", self.theirs_dl_raw),
                 ("ours_up_raw", self.ours_up_raw, "theirs_up_raw", self.theirs_up_raw)]
        # warm-up (not counted): page cache, first-touch of pages, connections
        self.ours_dl_raw()
        self.theirs_dl_raw()
        for run in range(self.args.runs):
            for a_key, a, b_key, b in pairs:
                order = [(a_key, a), (b_key, b)] if run % 2 == 0 else [(b_key, b), (a_key, a)]
                for key, fn in order:
                    self.cpu = 0.0
                    self.results.setdefault(key, []).append(fn())
                    self.cpu_per_key.setdefault(key, []).append(self.cpu)
            self.results.setdefault("client_up_to_sink", []).append(self.worker_client_to_sink())
            print(f"  run {run + 1}/{self.args.runs} done", file=sys.stderr, flush=True)

    def slow_reader(self) -> dict:
        """A fresh master; its RSS idle, then while curl --limit-rate 100M reads the 2 GiB source."""
        m = self.start_master("master-slow", self.work)
        os.link(self.src, m.storage / "src.bin")
        m.start()
        try:
            job = self.new_job(m, "slow")
            time.sleep(0.5)
            idle = benchlib.psutil.Process(m.pid).memory_info().rss
            seconds = self.args.slow_seconds
            with benchlib.RssSampler(m.pid) as s:
                r = subprocess.run(["curl", "-sS", "--limit-rate", "100M", "--max-time", str(seconds), "-o",
                                    "/dev/null", "-H", f"X-Worker-Id: {WORKER_ID}", "-w", "%{size_download}",
                                    f"{m.url}/api/worker/download-video?job_id={job}"],
                                   capture_output=True, text=True, timeout=seconds + 30)
            got = int(float(r.stdout.strip().split()[-1] or 0))
            return {"idle_mb": idle / MB, "peak_mb": s.peak / MB, "delta_mb": (s.peak - idle) / MB,
                    "read_mb": got / MB, "seconds": seconds}
        finally:
            m.stop()

    def jobs_latency(self, op: str) -> dict:
        """50 GET /api/jobs (20 ms apart) while our worker downloads/uploads the file, transfers back to back."""
        import requests
        lat: list[float] = []
        done = threading.Event()

        def probe() -> None:
            s = requests.Session()
            s.get(self.m_disk.url + "/api/jobs", timeout=10)
            time.sleep(0.3)  # the transfer is under way
            for _ in range(50):
                t0 = time.perf_counter()
                r = s.get(self.m_disk.url + "/api/jobs", timeout=30)
                lat.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                time.sleep(0.02)
            done.set()

        th = threading.Thread(target=probe, daemon=True)
        th.start()
        transfers = 0
        while not done.is_set() and transfers < 20:  # bounded
            if op == "download":
                out = self.work / "dl-probe.bin"
                self.run_worker("download", self.m_disk, self.dl_job, out)
                out.unlink()
            else:
                job = self.new_job(self.m_disk, "probe")
                self.run_worker("upload", self.m_disk, job, self.src)
                (self.m_disk.storage / "out" / f"{job}.mp4").unlink()
            transfers += 1
        th.join(timeout=60)
        return {"n": len(lat), "p50_ms": benchlib.percentile(lat, 50), "p95_ms": benchlib.percentile(lat, 95),
                "max_ms": max(lat) if lat else float("nan"), "transfers": transfers}


def process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds the processes (and their threads) have used so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def steal_seconds() -> float:
    """CPU time the hypervisor took from this VM so far (``steal`` in /proc/stat)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def sha256_speed() -> float:
    """This machine's SHA-256 (hashlib, i.e. OpenSSL) in MB/s: both ends of a verified upload pay it."""
    block = os.urandom(4 << 20)
    hasher = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(64):
        hasher.update(block)
    return 64 * len(block) / (time.perf_counter() - started) / MB


def spread(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Min and max of the ratio over the interleaved pairs (their time / ours, pair by pair)."""
    ratios = [t / o for o, t in zip(ours, theirs)]
    return min(ratios), max(ratios)


def fmt_row(name: str, times: list[float], size: int, note: str = "") -> str:
    med = benchlib.median(times)
    rates = [size / t / MB for t in times]
    return (f"| {name} | {len(times)} | {med:.3f} | {size / med / MB:.0f} | {min(rates):.0f}–{max(rates):.0f} "
            f"| {note} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=2 << 30, help="file size (default 2G; e.g. 512M)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (>= 5 for the record; default 5)")
    ap.add_argument("--workdir", default=str(benchlib.REPO / "bench" / "out"),
                    help="where the big files go (default bench/out); a temp dir inside it is removed at the end")
    ap.add_argument("--slow-seconds", type=int, default=10, help="how long the slow reader reads")
    ap.add_argument("--worker-chunk-size", type=parse_size, default=0,
                    help="the worker's storage.chunk_size (default: the worker config's default)")
    ap.add_argument("--upload-protocol", choices=("tus", "multipart"),
                    help="the worker's upload protocol (default: the worker config's default)")
    ap.add_argument("--worker-op", help=argparse.SUPPRESS)
    ap.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--worker-id", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_sink:
        return serve_sink(args.serve_sink)
    if args.worker_op:
        return worker_op(args)

    for tool in ("curl", "openssl", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"bench-transfer needs {tool}")
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        print("nginx missing: installing nginx-light from Debian", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"]
        if subprocess.run(install, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
            subprocess.run(install, env=env, check=True, timeout=600)

    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    size = args.size
    print(f"machine: {benchlib.machine_description()}")
    sha256_mbps = sha256_speed()
    print(f"sha256 (hashlib) on this machine: {sha256_mbps:.0f} MB/s")
    steal_at_start, wall_at_start = steal_seconds(), time.monotonic()
    print(f"code: {benchlib.code_state()}")
    with benchlib.temp_workdir("bench-transfer-", str(base)) as work:
        h = Harness(args, work)
        from worker.config import load_config
        chunk = args.worker_chunk_size or load_config(None).storage.chunk_size
        print(f"file: {size} bytes of /dev/urandom in {work}; runs={args.runs}; worker chunk_size={chunk}; "
              f"upload protocol={upload_protocol(args)}; "
              f"Repr-Digest in master/worker: {'yes' if h.digest else 'no'}", flush=True)
        try:
            h.make_source()
            h.start_all()
            h.series()
            slow = h.slow_reader()
            probe_dl = h.jobs_latency("download")
            probe_up = h.jobs_latency("upload")
            rss_master = max(h.rss_disk.peak, h.rss_null.peak)
            rss_master_disk, rss_master_null = h.rss_disk.peak, h.rss_null.peak
        finally:
            h.stop_all()
        # the nginx processes, the sink and the masters are gone; the temp dirs go with the `with`

    R = h.results
    steal_share = (steal_seconds() - steal_at_start) / ((time.monotonic() - wall_at_start) * (os.cpu_count() or 1))
    ver = "SHA-256 verified while streaming" if h.digest else "NO verification: the code has no Repr-Digest yet"
    dl_raw_how = ("requests loop like the client's (same session/adapter/chunk), discarded" if h.digest else
                  "MasterClient.download_source_video into a symlink to /dev/null")
    up_raw_how = (("the client's tus PATCH (FileRangeBody + session), no sha256 metadata (no pre-hash)"
                   if upload_protocol(args) == "tus" else
                   "the client's MultipartFileBody + session without Repr-Digest (no pre-hash)")
                  + "; into bench/null_master.py: the real master, received bodies to /dev/null, unhashed")
    if code_has_digest() != h.digest:
        print("WARNING: Repr-Digest appeared/disappeared in master/ worker/ during the run: figures are mixed")
    print()
    print("| row | runs | median s | MB/s (median) | MB/s min–max | what |")
    print("|---|---|---|---|---|---|")
    print(fmt_row("ours dl → disk", R["ours_dl"], size, f"worker client → file; {ver}"))
    if "ours_dl_then_openssl" in R:
        print(fmt_row("ours dl → disk, then openssl dgst", R["ours_dl_then_openssl"], size, "informative"))
    print(fmt_row("nginx → curl -o disk + openssl dgst", R["theirs_dl"], size, "nginx stock (sendfile on)"))
    print(fmt_row("  of which curl -o", R["theirs_dl_curl_only"], size, ""))
    up_ver = (f"{upload_protocol(args)}; the worker's digest (tus: hashed while sent, on the last PATCH; "
              "multipart: pre-hashed) verified by the master while streaming" if h.digest else ver)
    print(fmt_row("ours up → master → disk", R["ours_up"], size,
                  f"worker client → master (fsync + rename); {up_ver}"))
    print(fmt_row("curl -T → nginx DAV + openssl dgst", R["theirs_up"], size, "no fsync in nginx"))
    print(fmt_row("  of which curl -T", R["theirs_up_curl_only"], size, ""))
    print(fmt_row("ours dl raw → null", R["ours_dl_raw"], size, dl_raw_how))
    print(fmt_row("nginx (sendfile off, 2 1m) → curl null", R["theirs_dl_raw"], size, ""))
    print(fmt_row("ours up raw → null-sink master", R["ours_up_raw"], size, up_raw_how))
    print(fmt_row("curl -T → socket sink", R["theirs_up_raw"], size, "64 KiB recv_into, discarded"))
    print(fmt_row("worker client → socket sink", R["client_up_to_sink"], size, "informative: client side alone"))
    ratios = {
        "dl_verify": benchlib.median(R["theirs_dl"]) / benchlib.median(R["ours_dl"]),
        "up_verify": benchlib.median(R["theirs_up"]) / benchlib.median(R["ours_up"]),
        "dl_raw": benchlib.median(R["theirs_dl_raw"]) / benchlib.median(R["ours_dl_raw"]),
        "up_raw": benchlib.median(R["theirs_up_raw"]) / benchlib.median(R["ours_up_raw"]),
    }
    spreads = {k: spread(R[f"ours_{k.replace('_verify', '')}"], R[f"theirs_{k.replace('_verify', '')}"])
               for k in ratios}
    rss_worker = max(h.worker_rss) if h.worker_rss else 0
    gib = size / (1 << 30)
    print()
    print("| CPU seconds per GiB (client + server, median) | ours | theirs |")
    print("|---|---|---|")
    for k in ratios:
        row = k.replace("_verify", "")
        print(f"| {k} | {benchlib.median(h.cpu_per_key[f'ours_{row}']) / gib:.2f} | "
              f"{benchlib.median(h.cpu_per_key[f'theirs_{row}']) / gib:.2f} |")
    print()
    print("| figure | value (median) | min–max over the pairs | target | met |")
    print("|---|---|---|---|---|")
    for k, v in ratios.items():
        label = k + ("" if h.digest or "verify" not in k else " (ours unverified)")
        low, high = spreads[k]
        print(f"| {label} | {v:.2f} | {low:.2f}–{high:.2f} | >= {TARGETS[k]} | {'yes' if v >= TARGETS[k] else 'NO'} |")
    print(f"| master peak RSS MB (disk / null-sink master) | {rss_master / MB:.1f} ({rss_master_disk / MB:.1f} / "
          f"{rss_master_null / MB:.1f}) | <= {RSS_TARGET_MB} | {'yes' if rss_master / MB <= RSS_TARGET_MB else 'NO'} |")
    print(f"| worker peak RSS MB (max of {len(h.worker_rss)} runs) | {rss_worker / MB:.1f} | <= {RSS_TARGET_MB} | "
          f"{'yes' if rss_worker / MB <= RSS_TARGET_MB else 'NO'} |")
    by_op = ", ".join(f"{op} {v / MB:.1f}" for op, v in sorted(h.worker_rss_by_op.items()))
    print(f"| worker peak RSS MB by operation | {by_op} | – | – |")
    print(f"| master RSS, slow reader 100 MB/s for {slow['seconds']} s: idle → peak (Δ) | {slow['idle_mb']:.1f} → "
          f"{slow['peak_mb']:.1f} (+{slow['delta_mb']:.1f}; read {slow['read_mb']:.0f} MB) | "
          f"+{SLOW_READER_TARGET_MB} | {'yes' if slow['delta_mb'] <= SLOW_READER_TARGET_MB else 'NO'} |")
    for name, p in (("download", probe_dl), ("upload", probe_up)):
        print(f"| GET /api/jobs during {name}: p50 / p95 / max ms (n={p['n']}, {p['transfers']} transfers) | "
              f"{p['p50_ms']:.1f} / {p['p95_ms']:.1f} / {p['max_ms']:.1f} | p95 < {JOBS_P95_TARGET_MS} | "
              f"{'yes' if p['p95_ms'] < JOBS_P95_TARGET_MS else 'NO'} |")
    print(f"| master idle RSS at start (disk master) | {h.idle_rss_disk / MB:.1f} | – | – |")
    print()
    print(f"dl_raw method: {dl_raw_how}; up_raw method: {up_raw_how}")
    cpu_model = benchlib.machine_description().split(", ", 1)[0]
    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items())
          + f" rss_master_mb={rss_master / MB:.1f} rss_worker_mb={rss_worker / MB:.1f}"
          + " spread " + " ".join(f"{k}={low:.2f}-{high:.2f}" for k, (low, high) in spreads.items())
          + f" sha256_mbps={sha256_mbps:.0f} steal={steal_share:.0%} cpu={cpu_model!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
