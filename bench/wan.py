#!/usr/bin/env python3
"""A WAN-shaped transfer run (issue 3): master and worker in two network namespaces, 40 ms each way
(80 ms RTT) at 1 Gbit/s each way.

The issue asks for a veth pair shaped with ``tc qdisc ... netem delay 40ms rate 1gbit``. This VM's kernel
has no netem (``CONFIG_NET_SCH_NETEM is not set``; no fq, no clsact either, and no modules), so the link
is emulated instead: one TUN device in each namespace (MTU 64000) and a relay process (``--relay``, in the
root namespace) that moves each packet from one TUN to the other after the same two things netem does:
serialisation at 1 Gbit/s (a FIFO per direction, so a queue builds up like on a real bottleneck) and a
fixed 40 ms delay. It drops packets only beyond a 64 MiB queue (netem with a large ``limit``).

Needs root, iproute2 and curl. Both ends live in their own namespaces, so the TCP buffer sysctls tried
here (``net.ipv4.tcp_rmem``/``tcp_wmem`` are per namespace) never touch the host's.

Rows (median of ``--runs``), with the kernel's default TCP buffer limits and then with 64 MiB limits:
our worker's verified download to disk; its tus upload (pre-hash + verify); curl from our master (one
stream, to /dev/null); N parallel curl Range requests (``--streams``) for the same bytes, to see whether
parallel streams would pay. Usage: ``.venv/bin/python bench/wan.py [--size 256M] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from transfer import parse_size  # noqa: E402

NS_MASTER, NS_WORKER = "cvwan-master", "cvwan-worker"
IP_MASTER, IP_WORKER = "10.213.77.1", "10.213.77.2"
DELAY = float(os.environ.get("WAN_DELAY_MS", "40")) / 1000  # seconds, each way (env: calibration runs)
RATE = float(os.environ.get("WAN_RATE_MBIT", "1000")) * 1e6 / 8  # bytes/s, each way
QUEUE_LIMIT = 64 << 20  # bytes waiting per direction before packets are dropped
MTU = 64000
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
TUNED = {"net.ipv4.tcp_rmem": "4096 131072 67108864", "net.ipv4.tcp_wmem": "4096 16384 67108864"}
MB = 1e6


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def relay() -> int:
    """Create the two TUNs, put one in each namespace, then shuttle packets: rate-serialised, then delayed."""
    ends = []
    for ns, dev, ip, peer in ((NS_MASTER, "cvwan0", IP_MASTER, IP_WORKER), (NS_WORKER, "cvwan1", IP_WORKER, IP_MASTER)):
        fd = open_tun(dev)
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", ip, "peer", peer, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        os.set_blocking(fd, False)
        ends.append(fd)
    queues = {fd: collections.deque() for fd in ends}  # packets read from fd, due for the other end
    free_at = {fd: 0.0 for fd in ends}  # when the "wire" from fd is free again
    queued = {fd: 0 for fd in ends}
    other = {ends[0]: ends[1], ends[1]: ends[0]}
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else 1.0
        readable, _, _ = select.select(ends, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            for _ in range(64):
                try:
                    packet = os.read(fd, MTU + 100)
                except BlockingIOError:
                    break
                if queued[fd] + len(packet) > QUEUE_LIMIT:
                    continue  # tail drop
                free_at[fd] = max(now, free_at[fd]) + len(packet) / RATE
                queues[fd].append((free_at[fd] + DELAY, packet))
                queued[fd] += len(packet)
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                queued[fd] -= len(packet)
                try:
                    os.write(other[fd], packet)
                except BlockingIOError:
                    pass  # the receiving side's queue is full: a drop, as on a wire


def setup() -> subprocess.Popen:
    teardown()
    sh("ip", "netns", "add", NS_MASTER)
    sh("ip", "netns", "add", NS_WORKER)
    proc = subprocess.Popen([sys.executable, __file__, "--relay"], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the link relay did not start")
    return proc


def teardown() -> None:
    for ns in (NS_MASTER, NS_WORKER):
        sh("ip", "netns", "del", ns, check=False)


def sysctls(ns: str) -> dict[str, str]:
    return {k: sh("ip", "netns", "exec", ns, "sysctl", "-n", k).stdout.strip().replace("\t", " ") for k in TUNED}


def inner(args: argparse.Namespace) -> int:
    """Runs inside the master's namespace: the master, the file, and the worker-side commands via ip netns exec."""
    work = Path(args.workdir)
    src = work / "src.bin"
    with open(src, "wb", buffering=0) as f:
        for _ in range(args.size >> 20):
            f.write(os.urandom(1 << 20))
    m = benchlib.Master(work / "master", host=IP_MASTER,
                        extra_config="jobs:\n  lease_seconds: 7200\nauth:\n  allow_anonymous: true\n")
    m.storage.mkdir(parents=True, exist_ok=True)
    os.link(src, m.storage / "src.bin")
    m.start()
    import requests
    seq = [0]

    def job() -> str:
        seq[0] += 1
        job_id = f"wan-{seq[0]:03d}"
        requests.post(m.url + "/api/jobs", json={"id": job_id, "source_path": "src.bin", "output_path":
                      f"out/{job_id}.mp4", "profile": "h264-720p"}, timeout=10).raise_for_status()
        assert requests.post(m.url + "/api/worker/claim", json={"worker_id": "wan", "wait": 0},
                             timeout=10).json()["id"] == job_id
        return job_id

    in_worker = ["ip", "netns", "exec", NS_WORKER]
    dl_job = job()

    def worker_op(op: str, job_id: str, path: Path) -> float:
        r = subprocess.run([*in_worker, sys.executable, str(Path(__file__).parent / "transfer.py"), "--worker-op",
                            op, "--url", m.url, "--worker-id", "wan", "--job", job_id, "--path", str(path)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]

    def ours_dl() -> float:
        out = work / "dl.bin"
        t = worker_op("download", dl_job, out)
        out.unlink()
        return t

    def ours_up() -> float:
        job_id = job()
        t = worker_op("upload", job_id, src)
        (m.storage / "out" / f"{job_id}.mp4").unlink()
        return t

    def curl(ranges: int) -> float:
        url = f"{m.url}/api/worker/download-video?job_id={dl_job}"
        part = args.size // ranges
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*in_worker, "curl", "-sS", "-o", "/dev/null", "-H", "X-Worker-Id: wan",
                                   "-r", f"{i * part}-{(i + 1) * part - 1}", url]) for i in range(ranges)]
        for p in procs:
            p.wait(timeout=600)
        return time.perf_counter() - t0

    rows = []
    try:
        for label, tune in (("default TCP buffers", False), ("tcp_rmem/tcp_wmem max 64 MiB", True)):
            if tune:
                for ns in (NS_MASTER, NS_WORKER):
                    for k, v in TUNED.items():
                        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{k}={v}")
            limits = sysctls(NS_WORKER)
            tests = [("ours dl → disk (verified)", ours_dl), ("ours up (tus, verified) → disk", ours_up),
                     ("curl ← our master, 1 stream → null", lambda: curl(1)),
                     (f"curl ← our master, {args.streams} Range streams → null", lambda: curl(args.streams))]
            times: dict[str, list[float]] = {name: [] for name, _ in tests}
            for _ in range(args.runs):
                for name, fn in tests:
                    times[name].append(fn())
            for name, _ in tests:
                med = benchlib.median(times[name])
                rates = [args.size / t / MB for t in times[name]]
                rows.append(f"| {label} | {name} | {len(rates)} | {args.size / med / MB:.0f} | "
                            f"{min(rates):.0f}–{max(rates):.0f} |")
            rows.append(f"| {label} | (worker ns: {'; '.join(f'{k}={v}' for k, v in limits.items())}) | | | |")
    finally:
        m.stop()
    print("| buffers | transfer | runs | MB/s (median) | MB/s min–max |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=256 << 20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--workdir", default=str(benchlib.REPO / "bench" / "out"))
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args)
    if args.relay:
        return relay()
    if os.geteuid() != 0:
        sys.exit("bench/wan.py needs root (ip netns, tc)")
    print(f"machine: {benchlib.machine_description()}")
    print(f"code: {benchlib.code_state()}")
    print(f"link: TUN {NS_MASTER} <-> relay <-> TUN {NS_WORKER}: {RATE * 8 / 1e9:g} Gbit/s and {DELAY * 1000:g} ms "
          f"each way (RTT {2 * DELAY * 1000:g} ms), MTU {MTU}, queue {QUEUE_LIMIT >> 20} MiB per direction")
    print(f"file: {args.size} bytes; runs={args.runs}")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    link = setup()
    try:
        ping = sh("ip", "netns", "exec", NS_WORKER, "ping", "-c", "3", "-q", IP_MASTER, check=False).stdout
        print("ping:", (ping.strip().splitlines() or ["?"])[-1])
        with benchlib.temp_workdir("bench-wan-", args.workdir) as work:
            cmd = ["ip", "netns", "exec", NS_MASTER, sys.executable, __file__, "--inner", "--size", str(args.size),
                   "--runs", str(args.runs), "--streams", str(args.streams), "--workdir", str(work)]
            return subprocess.run(cmd, timeout=3600).returncode
    finally:
        benchlib.stop_process(link, signal.SIGTERM)
        teardown()


if __name__ == "__main__":
    sys.exit(main())
