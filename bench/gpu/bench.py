"""GPU benchmark: denoise-1080p Vulkan vs CPU (bare FFmpeg), and the worker's conversion step vs bare FFmpeg.

Run through bench/gpu/run.sh on the GPU host (docs/gpu.md). Every FFmpeg run is bounded (``timeout -k``).
Bare runs use the exact argument lists the worker builds (worker.ffmpeg_command), so the only
difference in the overhead comparison is the worker's own work: probing the source, the watchdog
and progress parsing, and the output check.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from worker import capabilities
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.ffmpeg import probe_with_ffmpeg
from worker.metrics import WorkerMetrics
from worker.ffmpeg_command import Plan, build_command


def make_clip(ffmpeg: str, path: Path, seconds: float, size: str, noise: bool) -> Path:
    video = f"testsrc2=size={size}:rate=25" + (",noise=alls=25:allf=t" if noise else "")
    subprocess.run(["timeout", "-k", "5", "300", ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", video,
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True)
    return path


def bare(command: list[str], limit: float) -> dict:
    """Wall seconds of one bare FFmpeg run under ``timeout -k``; None when it failed or ran out of time."""
    started = time.monotonic()
    result = subprocess.run(["timeout", "-k", "5", str(int(limit)), *command], capture_output=True, text=True)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 3), "rc": result.returncode,
            "error": result.stderr.strip().splitlines()[-1] if result.returncode and result.stderr.strip() else None}


def denoise(ffmpeg: str, clip: Path, work: Path, cpu_limit: float) -> dict:
    profile = BUILTIN_PROFILES["denoise-1080p"]
    info = probe_with_ffmpeg(ffmpeg, clip)
    vk_cmd = build_command(ffmpeg, profile, clip, work / "dn-vk.mp4", info=info, plan=Plan("vulkan", "libx264"))
    cpu_cmd = build_command(ffmpeg, profile, clip, work / "dn-cpu.mp4", info=info, plan=Plan("cpu", "libx264"))
    vulkan = [bare(vk_cmd, 120) for _ in range(3)]
    cpu = bare(cpu_cmd, cpu_limit)
    vk_ok = [r["seconds"] for r in vulkan if r["rc"] == 0]
    vk_best = statistics.median(vk_ok) if vk_ok else None
    return {"clip_seconds": info.duration, "vulkan_runs": vulkan, "cpu_run": cpu, "vulkan_median_s": vk_best,
            "cpu_s": cpu["seconds"], "cpu_finished": cpu["rc"] == 0,
            "speedup": round(cpu["seconds"] / vk_best, 1) if vk_best and cpu["rc"] == 0 else None,
            "vulkan_command": " ".join(vk_cmd), "cpu_command": " ".join(cpu_cmd)}


def overhead(ffmpeg: str, clip: Path, work: Path, rounds: int) -> dict:
    """Alternate bare FFmpeg and Converter.convert (accel auto: the CPU form for h264-1080p) on the same clip."""
    profile = BUILTIN_PROFILES["h264-1080p"]
    converter = Converter.start(FfmpegSection(binary=ffmpeg, accel="auto", timeout=600, stall_timeout=60),
                                WorkerMetrics(CollectorRegistry()))
    info = converter.probe(clip)
    plan = converter.plan(profile, info)
    command = build_command(ffmpeg, profile, clip, work / "bare.mp4", info=info, plan=plan)
    bare_runs, worker_runs = [], []
    for _ in range(rounds):
        bare_runs.append(bare(command, 300)["seconds"])
        started = time.monotonic()
        result = converter.convert(profile, clip, work / "worker.mp4", threading.Event(), label="bench")
        worker_runs.append(round(time.monotonic() - started, 3))
    bare_s, worker_s = statistics.median(bare_runs), statistics.median(worker_runs)
    return {"profile": profile.name, "plan": plan.__dict__, "accel": result.accel, "clip_seconds": info.duration,
            "bare_runs": bare_runs, "worker_runs": worker_runs, "bare_median_s": bare_s, "worker_median_s": worker_s,
            "overhead_pct": round((worker_s / bare_s - 1) * 100, 1)}


def worker_denoise(ffmpeg: str, clip: Path, work: Path) -> dict:
    """denoise-1080p through the worker (accel auto): which form it picks on this host, and its speed."""
    converter = Converter.start(FfmpegSection(binary=ffmpeg, accel="auto", timeout=300, stall_timeout=60),
                                WorkerMetrics(CollectorRegistry()))
    result = converter.convert(BUILTIN_PROFILES["denoise-1080p"], clip, work / "dn-worker.mp4", threading.Event(),
                               label="bench")
    return {"accel": result.accel, "seconds": round(result.seconds, 3), "speed": round(result.speed, 2),
            "fallback": result.fallback, "capabilities": converter.capabilities()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ffmpeg", required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu.json"))
    parser.add_argument("--denoise-seconds", type=float, default=2.0)
    parser.add_argument("--cpu-limit", type=float, default=240.0, help="seconds before the CPU denoise is cut off")
    parser.add_argument("--overhead-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="denoise_bare,denoise_worker,overhead", help="comma-separated steps to run")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": _cpus()}
    caps = capabilities.probe(args.ffmpeg, accel="auto")
    report["probe"] = caps.to_dict()
    print(json.dumps(report, indent=1), flush=True)
    noisy = make_clip(args.ffmpeg, args.work / "noisy-1080p.mp4", args.denoise_seconds, "1920x1080", noise=True)
    long_clip = make_clip(args.ffmpeg, args.work / "clip-1080p.mp4", args.overhead_seconds, "1920x1080", noise=False)
    for name, step in (("denoise_bare", lambda: denoise(args.ffmpeg, noisy, args.work, args.cpu_limit)),
                       ("denoise_worker", lambda: worker_denoise(args.ffmpeg, noisy, args.work)),
                       ("overhead", lambda: overhead(args.ffmpeg, long_clip, args.work, args.rounds))):
        if name not in args.steps.split(","):
            continue
        try:
            report[name] = step()
        except Exception as exc:  # keep what was measured so far
            report[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        print(name, json.dumps(report[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
