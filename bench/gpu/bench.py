"""GPU benchmark: denoise-1080p and HDR tone mapping, Vulkan vs CPU; the worker vs bare FFmpeg; jobs/h per slots.

Run through bench/gpu/run.sh on the GPU host (docs/gpu.md). Every FFmpeg run is bounded (``timeout -k``).
Bare runs use the exact argument lists the worker builds (worker.ffmpeg_command), so the only
difference in the overhead comparison is the worker's own work: probing the source, the watchdog
and progress parsing, and the output check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from worker import capabilities
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.ffmpeg import probe_with_ffmpeg
from worker.metrics import WorkerMetrics
from worker.ffmpeg_command import Plan, build_command
from worker.media import Colour


def make_clip(ffmpeg: str, path: Path, seconds: float, size: str, noise: bool) -> Path:
    video = f"testsrc2=size={size}:rate=25" + (",noise=alls=25:allf=t" if noise else "")
    subprocess.run(["timeout", "-k", "5", "300", ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", video,
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True)
    return path


def make_hdr10_clip(ffmpeg: str, path: Path, seconds: float, size: str) -> Path:
    """HEVC Main10 HDR10 (PQ, BT.2020, mastering display and light level SEI), as tests/fixtures.py makes it,
    but testsrc2's code values are tagged PQ as they are: no zscale at 4K, the content does not matter here."""
    x265 = ("log-level=error:hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
            "L(10000000,1):max-cll=1000,400")
    subprocess.run(["timeout", "-k", "5", "300", ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                    "-t", str(seconds), "-vf", "setparams=color_primaries=bt2020:color_trc=smpte2084:"
                    "colorspace=bt2020nc,format=yuv420p10le", "-c:v", "libx265", "-preset", "ultrafast",
                    "-x265-params", x265, "-c:a", "aac", str(path)], check=True)
    return path


def bare(command: list[str], limit: float) -> dict:
    """Wall seconds of one bare FFmpeg run under ``timeout -k``; None when it failed or ran out of time."""
    started, cpu_before = time.monotonic(), _children_cpu()
    result = subprocess.run(["timeout", "-k", "5", str(int(limit)), *command], capture_output=True, text=True)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 3), "cpu_seconds": round(_children_cpu() - cpu_before, 1),
            "rc": result.returncode,
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


def tonemap(ffmpeg: str, clip: Path, work: Path, decode: bool) -> dict:
    """h264-1080p on a 4K HDR10 clip: the Vulkan form (libplacebo; with and without Vulkan decode) vs the CPU
    form (zscale + tonemap), and the CPU form without tone mapping (what the profiles did before) for scale."""
    profile = BUILTIN_PROFILES["h264-1080p"]
    info = probe_with_ffmpeg(ffmpeg, clip)  # no ffprobe on the GPU host: the worker's fallback probe
    forms = {"vulkan": Plan("vulkan", "libx264"), "cpu": Plan("cpu", "libx264")}
    if decode:
        forms["vulkan_decode"] = Plan("vulkan", "libx264", vulkan_decode=True)
    commands = {name: build_command(ffmpeg, profile, clip, work / f"tm-{name}.mp4", info=info, plan=plan)
                for name, plan in forms.items()}
    commands["cpu_no_tonemap"] = build_command(ffmpeg, profile, clip, work / "tm-none.mp4",
                                               info=dataclasses.replace(info, colour=Colour()), plan=forms["cpu"])
    runs = {name: [bare(command, 180) for _ in range(1 if name.startswith("cpu") else 3)]
            for name, command in commands.items()}
    medians = {name: _median_ok(rs) for name, rs in runs.items()}
    vulkan = [seconds for name, seconds in medians.items() if name.startswith("vulkan") and seconds]
    vulkan_best, cpu = min(vulkan, default=None), medians["cpu"]
    return {"clip_seconds": info.duration, "source": info.colour.describe(), "runs": runs, "median_s": medians,
            "speedup": round(cpu / vulkan_best, 2) if cpu and vulkan_best else None,
            "speedup_cpu_decode": round(cpu / medians["vulkan"], 2) if cpu and medians["vulkan"] else None,
            "commands": {name: " ".join(command) for name, command in commands.items()}}


def tonemap_stages(ffmpeg: str, clip: Path, work: Path, rounds: int) -> dict:
    """Where the Vulkan-decode tone-map job's time goes, and the most any GPU form could gain over the CPU form:
    each stage alone (Vulkan decode; decode + libplacebo + download, no encoder; libx264 alone on the same 1080p
    frames, read raw from memory), the CPU form as the 2026-12-02 note measured it (tone mapping at 4K, then
    scaling), and an NV12 variant of the Vulkan form (libx264 takes NV12 as it is: one conversion less)."""
    profile = BUILTIN_PROFILES["h264-1080p"]
    info = probe_with_ffmpeg(ffmpeg, clip)
    vk = Plan("vulkan", "libx264", vulkan_decode=True)
    full = build_command(ffmpeg, profile, clip, work / "st-full.mp4", info=info, plan=vk)
    cpu = build_command(ffmpeg, profile, clip, work / "st-cpu.mp4", info=info, plan=Plan("cpu", "libx264"))
    vf = full[full.index("-vf") + 1]
    hw_in = full[full.index("-init_hw_device"):full.index("-i")]
    raw = Path("/dev/shm/st-1080p.nut")
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "21", "-pix_fmt", "yuv420p"]
    commands = {
        "full": full,
        "cpu_form": cpu,
        "cpu_form_tonemap_at_4k": [part.replace("zscale=w=1920:h=1080:t=linear", "zscale=t=linear").replace(
            "format=yuv420p,sidedata", "scale=1920:1080,format=yuv420p,sidedata", 1) for part in cpu],
        "decode_only": [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *hw_in, "-i", str(clip),
                        "-map", "0:v:0", "-f", "null", "-"],
        "decode_placebo_download": [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *hw_in, "-i",
                                    str(clip), "-map", "0:v:0", "-vf", vf, "-c:v", "rawvideo", "-f", "nut",
                                    str(raw)],
        "x264_alone": [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), *x264,
                       str(work / "st-x264.mp4")],
        "full_nv12": [part.replace(":format=yuv420p,hwdownload,format=yuv420p,format=yuv420p",
                                   ":format=nv12,hwdownload,format=nv12").replace("st-full.mp4", "st-nv12.mp4")
                      for part in full],
    }
    commands["full_nv12"] = [("nv12" if part == "yuv420p" and commands["full_nv12"][i - 1] == "-pix_fmt" else part)
                             for i, part in enumerate(commands["full_nv12"])]
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(rounds):  # alternating, so that every form sees the same machine
        for name, command in commands.items():
            runs[name].append(bare(command, 180))
    raw.unlink(missing_ok=True)
    medians = {name: _median_ok(rs) for name, rs in runs.items()}
    ratio = lambda a, b: round(medians[a] / medians[b], 2) if medians.get(a) and medians.get(b) else None
    return {"runs": runs, "median_s": medians,
            "speedup": ratio("cpu_form", "full"), "speedup_nv12": ratio("cpu_form", "full_nv12"),
            "speedup_vs_tonemap_at_4k": ratio("cpu_form_tonemap_at_4k", "full"),
            "bound_encoder_alone": ratio("cpu_form", "x264_alone"),
            "commands": {name: " ".join(command) for name, command in commands.items()}}


def _median_ok(runs: list[dict]) -> float | None:
    ok = [r["seconds"] for r in runs if r["rc"] == 0]
    return statistics.median(ok) if ok else None


def worker_tonemap(ffmpeg: str, clip: Path, work: Path) -> dict:
    """h264-1080p on the HDR10 clip through the worker (accel auto), with ``vulkan_decode`` off (the default) and
    on: the form it picks, and its speed."""
    report = {}
    for decode in (False, True):
        settings = FfmpegSection(binary=ffmpeg, accel="auto", timeout=300, stall_timeout=60, vulkan_decode=decode)
        converter = Converter.start(settings, WorkerMetrics(CollectorRegistry()))
        result = converter.convert(BUILTIN_PROFILES["h264-1080p"], clip, work / "tm-worker.mp4", threading.Event(),
                                   label="bench")
        report[f"vulkan_decode_{str(decode).lower()}"] = {
            "accel": result.accel, "seconds": round(result.seconds, 3), "speed": round(result.speed, 2),
            "fallback": result.fallback, "hdr": result.hdr}
    return report


def overhead(ffmpeg: str, clip: Path, work: Path, rounds: int, profile_name: str = "h264-1080p",
             settings: FfmpegSection | None = None) -> dict:
    """Alternate bare FFmpeg and Converter.convert on the same clip (default settings: accel auto, so the CPU
    form for h264-1080p on SDR; the Vulkan tone-map form on an HDR clip)."""
    profile = BUILTIN_PROFILES[profile_name]
    settings = settings or FfmpegSection(binary=ffmpeg, accel="auto", timeout=600, stall_timeout=60)
    converter = Converter.start(settings, WorkerMetrics(CollectorRegistry()))
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
            "overhead_pct": round((worker_s / bare_s - 1) * 100, 1), "fallback": result.fallback}


def concurrency(ffmpeg: str, clips: dict[str, Path], work: Path, settings: list[int], jobs_per_slot: int) -> dict:
    """Jobs per hour with N conversions at once through one Converter, as the worker's N slots run them
    (claim, transfers and the master left out: the same clip is converted over and over)."""
    cases = {"denoise-1080p": clips["noisy"], "tonemap": clips["hdr"]}
    table: dict[str, dict] = {}
    for case, clip in cases.items():
        profile = BUILTIN_PROFILES["h264-1080p" if case == "tonemap" else case]
        converter = Converter.start(FfmpegSection(binary=ffmpeg, accel="auto", timeout=600, stall_timeout=120,
                                                  vulkan_decode=True), WorkerMetrics(CollectorRegistry()))
        table[case] = {"profile": profile.name, "clip": clip.name, "rows": {}}
        for slots in settings:
            table[case]["rows"][str(slots)] = _slots_run(converter, profile, clip, work, slots, jobs_per_slot)
            print(case, slots, json.dumps(table[case]["rows"][str(slots)]), flush=True)
        base = table[case]["rows"][str(settings[0])]["jobs_per_hour"]
        for row in table[case]["rows"].values():
            row["vs_1"] = round(row["jobs_per_hour"] / base, 2) if base else None
    return table


def _slots_run(converter: Converter, profile, clip: Path, work: Path, slots: int, jobs_per_slot: int) -> dict:
    results: list = []
    errors: list[str] = []

    def slot(index: int) -> None:
        for job in range(jobs_per_slot):
            try:
                results.append(converter.convert(profile, clip, work / f"cc-{slots}-{index}-{job}.mp4",
                                                 threading.Event(), label=f"slot {index}"))
            except Exception as exc:  # recorded, the others go on
                errors.append(f"{exc.__class__.__name__}: {exc}")

    cpu_before, started = _children_cpu(), time.monotonic()
    threads = [threading.Thread(target=slot, args=(i,)) for i in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    done = len(results)
    return {"slots": slots, "jobs": done, "wall_s": round(wall, 2), "jobs_per_hour": round(done / wall * 3600),
            "job_seconds_median": round(statistics.median(r.seconds for r in results), 2) if results else None,
            "cpu_seconds_per_job": round((_children_cpu() - cpu_before) / done, 1) if done else None,
            "accel": sorted({r.accel for r in results}), "fallbacks": sum(bool(r.fallback) for r in results),
            "errors": errors[:3]}


def probe_timing(ffmpeg: str, clip: Path, rounds: int) -> dict:
    """What the worker's source probe costs on the HDR clip: ``ffmpeg -i`` alone vs the whole probe (which also
    reads the first frame's HDR10 side data)."""
    summary, whole, frame, one_thread = [], [], [], []
    showinfo = ["-i", str(clip), "-map", "0:v:0", "-frames:v", "1", "-vf", "showinfo", "-f", "null", "-"]
    for _ in range(rounds):
        summary.append(bare([ffmpeg, "-hide_banner", "-nostdin", "-i", str(clip)], 60)["seconds"])
        started = time.monotonic()
        probe_with_ffmpeg(ffmpeg, clip)
        whole.append(round(time.monotonic() - started, 3))
        frame.append(bare([ffmpeg, "-hide_banner", "-nostdin", *showinfo], 60)["seconds"])
        one_thread.append(bare([ffmpeg, "-hide_banner", "-nostdin", "-threads", "1", *showinfo], 60)["seconds"])
    return {"ffmpeg_i_median_s": statistics.median(summary), "probe_median_s": statistics.median(whole),
            "first_frame_median_s": statistics.median(frame),
            "first_frame_one_thread_median_s": statistics.median(one_thread)}


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
    parser.add_argument("--hdr-seconds", type=float, default=20.0)
    parser.add_argument("--hdr-size", default="3840x2160")
    parser.add_argument("--slots", default="1,2,4,8", help="concurrency settings for the concurrency step")
    parser.add_argument("--jobs-per-slot", type=int, default=2)
    parser.add_argument("--steps", default="denoise_bare,denoise_worker,overhead", help="comma-separated steps to run")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": _cpus()}
    caps = capabilities.probe(args.ffmpeg, accel="auto")
    report["probe"] = caps.to_dict()
    print(json.dumps(report, indent=1), flush=True)
    clips = {
        "noisy": lambda: make_clip(args.ffmpeg, args.work / "noisy-1080p.mp4", args.denoise_seconds, "1920x1080",
                                   noise=True),
        "long": lambda: make_clip(args.ffmpeg, args.work / "clip-1080p.mp4", args.overhead_seconds, "1920x1080",
                                  noise=False),
        "hdr": lambda: make_hdr10_clip(args.ffmpeg, args.work / "hdr10-4k.mkv", args.hdr_seconds, args.hdr_size),
    }
    clip = _once(clips)
    decode = "hevc" in caps.vulkan.decode
    print("decode probe:", json.dumps(caps.vulkan.decode_probe), flush=True)
    tonemap_settings = FfmpegSection(binary=args.ffmpeg, accel="auto", timeout=600, stall_timeout=60)
    slots = [int(n) for n in args.slots.split(",")]
    for name, step in (("denoise_bare", lambda: denoise(args.ffmpeg, clip("noisy"), args.work, args.cpu_limit)),
                       ("denoise_worker", lambda: worker_denoise(args.ffmpeg, clip("noisy"), args.work)),
                       ("overhead", lambda: overhead(args.ffmpeg, clip("long"), args.work, args.rounds)),
                       ("tonemap", lambda: tonemap(args.ffmpeg, clip("hdr"), args.work, decode)),
                       ("tonemap_stages", lambda: tonemap_stages(args.ffmpeg, clip("hdr"), args.work, args.rounds)),
                       ("tonemap_worker", lambda: worker_tonemap(args.ffmpeg, clip("hdr"), args.work)),
                       ("overhead_tonemap", lambda: overhead(args.ffmpeg, clip("hdr"), args.work, args.rounds,
                                                             settings=tonemap_settings)),
                       ("probe_timing", lambda: probe_timing(args.ffmpeg, clip("hdr"), args.rounds)),
                       ("concurrency", lambda: concurrency(args.ffmpeg, {"noisy": clip("noisy"), "hdr": clip("hdr")},
                                                           args.work, slots, args.jobs_per_slot))):
        if name not in args.steps.split(","):
            continue
        try:
            report[name] = step()
        except Exception as exc:  # keep what was measured so far
            report[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        print(name, json.dumps(report[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(makers: dict[str, Callable[[], Path]]) -> Callable[[str], Path]:
    """``clip(name)``: make each clip the chosen steps need, once."""
    made: dict = {}
    return lambda name: made[name] if name in made else made.setdefault(name, makers[name]())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
