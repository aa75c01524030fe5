"""``converterctl``: submit, follow and fetch conversion jobs on a converter master.

Global options (before or after the command): ``--url`` (``$CONVERTER_URL``, default
``http://localhost:8080``), ``--token`` (``$CONVERTER_TOKEN``, sent as ``Authorization: Bearer``),
``--json``, ``--timeout``. Exit statuses are in ``converterctl.errors`` and docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from converter_common.profiles import BUILTIN_PROFILES
from converter_common.protocol import PRIORITY_MAX, PRIORITY_MIN
from converterctl import errors, tables
from converterctl.client import Client, quote_id
from converterctl.errors import CliError, Failed, TimedOut, UsageError
from converterctl.progress import JobBoard, human_bytes
from converterctl.transfer import SourceRequest, download_output, upload_source
from converterctl.upload_state import UploadStateFile, default_state_path

DEFAULT_URL = "http://localhost:8080"
DEFAULT_PROFILE = "h264-720p"
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "skipped")
TERMINAL = {"completed", "failed", "cancelled", "skipped"}
JOB_FIELDS = ("id", "status", "priority", "profile", "source_path", "output_path", "source_size", "output_size",
              "saved_bytes", "progress", "attempts", "max_attempts", "worker_id", "error", "created_at", "claimed_at",
              "finished_at", "updated_at", "lease_expires_at", "reason", "kept_source")


class Context:
    """What every command gets: the parsed arguments, the API client, where to print."""

    def __init__(self, args: argparse.Namespace, out=None, err=None):
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.args.url, self.args.token, self.args.timeout)
        return self._client

    @property
    def show_progress(self) -> bool:
        return not self.args.no_progress

    def say(self, message: str) -> None:
        """A note on stderr while a command goes on (a retry, a warning)."""
        print(f"converterctl: {message}", file=self.err, flush=True)

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) if self.args.json else human(data)
        print(text, file=self.out)


# -- commands ---------------------------------------------------------------------------------------


def cmd_submit(ctx: Context) -> int:
    args = ctx.args
    if (args.source is None) == (args.upload is None):
        raise UsageError("give either a SOURCE path in storage or --upload FILE (one of them)")
    if args.upload is not None:
        job = _submit_upload(ctx, Path(args.upload))
    else:
        # a health check writes nothing: it takes no output; a configured profile's the master judges
        needs_output = args.profile in BUILTIN_PROFILES and not BUILTIN_PROFILES[args.profile].check_only
        if not args.output and needs_output:
            raise UsageError("--output PATH is required when submitting a path in storage")
        body = {"source_path": args.source, "output_path": args.output, "profile": args.profile}
        if args.id:
            body["id"] = args.id
        if args.priority is not None:
            body["priority"] = args.priority
        job = ctx.client.json("POST", "/api/jobs", json=body)
    if args.watch:
        if not args.json:
            print(f"submitted job {job['id']}", file=ctx.out)
        return _watch(ctx, [job["id"]])
    ctx.emit(job, lambda j: f"submitted job {j['id']} ({j['source_path']} -> {j['output_path']}, {j['profile']})")
    return errors.EXIT_OK


def _submit_upload(ctx: Context, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"--upload: {path} is not a readable file")
    request = SourceRequest(ctx.args.profile, ctx.args.output or None, ctx.args.id or None, ctx.args.priority)
    state = UploadStateFile(default_state_path(), warn=lambda message: ctx.say(f"warning: {message}"))
    return upload_source(ctx.client, path, request, state, resume=not ctx.args.no_resume,
                         show_progress=ctx.show_progress, notify=ctx.say)


def cmd_list(ctx: Context) -> int:
    params = {"limit": ctx.args.limit, "offset": ctx.args.offset}
    if ctx.args.status:
        params["status"] = ctx.args.status
    page = ctx.client.json("GET", "/api/jobs", params=params)
    ctx.emit(page, _jobs_table)
    return errors.EXIT_OK


def _jobs_table(page: dict[str, Any]) -> str:
    rows = [(j["id"], j["status"], j["profile"], "-" if j.get("progress") is None else f"{j['progress']:.0f}%",
             j["source_path"], j["output_path"], tables.ago(j["updated_at"])) for j in page["jobs"]]
    shown = f"{page['offset'] + 1}-{page['offset'] + len(rows)}" if rows else "none"
    footer = f"\n({shown} of {page['total']})"
    return tables.table(("ID", "STATUS", "PROFILE", "PROGRESS", "SOURCE", "OUTPUT", "UPDATED"), rows) + footer


def cmd_show(ctx: Context) -> int:
    ctx.emit(ctx.client.job(ctx.args.job), lambda j: tables.fields(j, JOB_FIELDS) + health_lines(j.get("health")))
    return errors.EXIT_OK


def health_lines(health: dict[str, Any] | None) -> str:
    """A health check's result under the job's fields: healthy or not, the decoder, FFmpeg's errors."""
    if not health:
        return ""
    verdict = "yes" if health.get("healthy") else f"no, {health.get('error_count', 0)} error(s)"
    lines = [f"health: {verdict} ({health.get('decoder', 'cpu')} decode)"]
    if health.get("fallback"):
        lines.append(f"  after a Vulkan decode was set aside: {health['fallback']}")
    lines += [f"  {line}" for line in health.get("errors") or []]
    return "\n" + "\n".join(lines)


def cmd_cancel(ctx: Context) -> int:
    job = ctx.client.json("POST", f"/api/jobs/{quote_id(ctx.args.job)}/cancel")
    ctx.emit(job, lambda j: f"job {j['id']} is {j['status']}")
    return errors.EXIT_OK


def cmd_retry(ctx: Context) -> int:
    job = ctx.client.json("POST", f"/api/jobs/{quote_id(ctx.args.job)}/retry")
    ctx.emit(job, lambda j: f"job {j['id']} is {j['status']} again")
    return errors.EXIT_OK


def cmd_priority(ctx: Context) -> int:
    job = ctx.client.json("PATCH", f"/api/jobs/{quote_id(ctx.args.job)}", json={"priority": ctx.args.priority})
    ctx.emit(job, lambda j: f"job {j['id']} now has priority {j['priority']}")
    return errors.EXIT_OK


def cmd_workers(ctx: Context) -> int:
    data = ctx.client.json("GET", "/api/workers")
    rows = [(w["id"], w.get("hostname", ""), "yes" if w.get("online") else "no", _claiming(w), w.get("concurrency"),
             ",".join(w.get("jobs") or []) or "-", tables.ago(w.get("last_seen_at"))) for w in data["workers"]]
    ctx.emit(data, lambda _: tables.table(("ID", "HOST", "ONLINE", "CLAIMS", "SLOTS", "JOBS", "LAST SEEN"), rows))
    return errors.EXIT_OK


def _claiming(worker: dict[str, Any]) -> str:
    """Whether the worker takes jobs now, or why not."""
    reasons = [name for name in ("paused", "scheduled_off", "quarantined") if worker.get(name)]
    return ",".join(reasons) or "open"


def cmd_worker_pause(ctx: Context) -> int:
    return _worker_action(ctx, "pause")


def cmd_worker_resume(ctx: Context) -> int:
    return _worker_action(ctx, "resume")


def _worker_action(ctx: Context, action: str) -> int:
    worker = ctx.client.json("POST", f"/api/workers/{quote_id(ctx.args.worker)}/{action}")
    ctx.emit(worker, lambda w: f"worker {w['id']} is {'paused' if w['paused'] else 'claiming again'}"
                               f"{' (running: ' + ', '.join(w['jobs']) + ')' if w.get('jobs') else ''}")
    return errors.EXIT_OK


def cmd_queue(ctx: Context) -> int:
    path = "/api/queue" if ctx.args.action == "status" else f"/api/queue/{ctx.args.action}"
    state = ctx.client.json("GET" if ctx.args.action == "status" else "POST", path)
    ctx.emit(state, _queue_line)
    return errors.EXIT_OK


def _queue_line(state: dict[str, Any]) -> str:
    jobs = state.get("jobs") or {}
    counts = ", ".join(f"{jobs[s]} {s}" for s in ("pending", "processing") if s in jobs)
    since = f" since {tables.format_value('paused_at', state['paused_at'])}" if state.get("paused") else ""
    return f"queue {'paused' + since if state.get('paused') else 'running'} ({counts})"


def cmd_stats(ctx: Context) -> int:
    data = ctx.client.json("GET", "/api/stats", params={"days": ctx.args.days})
    ctx.emit(data, _stats_text)
    return errors.EXIT_OK


def cmd_webhooks(ctx: Context) -> int:
    params = {"limit": ctx.args.limit, "offset": ctx.args.offset}
    params.update({k: v for k, v in (("status", ctx.args.status), ("event", ctx.args.event)) if v})
    data = ctx.client.json("GET", "/api/webhooks/deliveries", params=params)
    ctx.emit(data, _deliveries_text)
    return errors.EXIT_OK


def _deliveries_text(data: dict[str, Any]) -> str:
    rows = [(d["id"][:12], d["event_type"], d["job_id"] or d["worker_id"] or "-", d["subscription"], d["status"],
             d["attempts"], tables.ago(d["delivered_at"] or d["updated_at"]), d["last_error"] or "")
            for d in data["deliveries"]]
    counts = ", ".join(f"{n} {status}" for status, n in data["counts"].items())
    return (tables.table(("DELIVERY", "EVENT", "SUBJECT", "SUBSCRIPTION", "STATUS", "ATTEMPTS", "LAST", "ERROR"), rows)
            + f"\n{len(rows)} of {data['total']} ({counts})")


def _stats_text(data: dict[str, Any]) -> str:
    headers = ("JOBS", "SOURCE", "OUTPUT", "SAVED", "SAVED %")

    def cells(row: dict[str, Any]) -> tuple:
        ratio = f"{100 * row['saved_bytes'] / row['source_bytes']:.1f}%" if row["source_bytes"] else "-"
        return (row["jobs"], human_bytes(row["source_bytes"]), human_bytes(row["output_bytes"]),
                _signed_bytes(row["saved_bytes"]), ratio)

    blocks = [tables.table(("TOTAL", *headers), [("all", *cells(data["totals"]))])]
    for key, title in (("by_profile", "PROFILE"), ("by_worker", "WORKER"), ("by_day", "DAY (UTC)")):
        name = {"by_profile": "profile", "by_worker": "worker_id", "by_day": "day"}[key]
        blocks.append(tables.table((title, *headers), [(row[name] or "-", *cells(row)) for row in data[key]]))
    return "\n\n".join(blocks)


def _signed_bytes(size: int) -> str:
    return ("-" if size < 0 else "") + human_bytes(abs(size))


PROFILE_FIELDS = ("name", "base", "description", "video_codec", "codec", "height", "upscale", "crf", "preset",
                  "containers", "audio_codec", "audio_bitrate", "audio_languages", "audio_channels", "subtitles",
                  "subtitle_languages", "hdr", "bit_depth", "filter", "priority", "skip_bpp", "skip_tolerance",
                  "discard_larger", "check_only")


def cmd_profiles(ctx: Context) -> int:
    """The master's profiles (built-in, and configured ones with their BASE), with their track rules; with NAME
    every field of that one."""
    data = ctx.client.json("GET", "/api/profiles")
    if ctx.args.name:
        profile = next((p for p in data["profiles"] if p["name"] == ctx.args.name), None)
        if profile is None:
            raise Failed(f"no profile {ctx.args.name!r} (the master's: "
                         f"{', '.join(p['name'] for p in data['profiles'])})")
        ctx.emit(profile, lambda p: tables.fields({k: _profile_value(v) for k, v in p.items()},
                                                  [*PROFILE_FIELDS, *sorted(set(p) - set(PROFILE_FIELDS))]))
        return errors.EXIT_OK
    rows = [(p["name"], p.get("base") or "-", ",".join(p.get("containers") or []) or "-", p.get("video_codec", ""),
             p.get("height", ""), _audio_rule(p), _subtitle_rule(p), p.get("priority", 0), p.get("description", ""))
            for p in data["profiles"]]
    ctx.emit(data, lambda _: tables.table(("NAME", "BASE", "CONTAINERS", "VIDEO", "HEIGHT", "AUDIO", "SUBTITLES",
                                           "PRIORITY", "DESCRIPTION"), rows))
    return errors.EXIT_OK


def _profile_value(value: Any) -> Any:
    return (", ".join(map(str, value)) or "-") if isinstance(value, list) else value


def _audio_rule(profile: dict[str, Any]) -> str:
    """``all``, or the languages kept in order (``jpn>eng``); ``/2ch`` when tracks are downmixed."""
    if profile.get("check_only"):
        return "-"
    languages = ">".join(profile.get("audio_languages") or []) or "all"
    return languages + (f"/{profile['audio_channels']}ch" if profile.get("audio_channels") else "")


def _subtitle_rule(profile: dict[str, Any]) -> str:
    if profile.get("check_only"):
        return "-"
    if profile.get("subtitles") == "drop":
        return "none"
    return ">".join(profile.get("subtitle_languages") or []) or "all"


def cmd_download(ctx: Context) -> int:
    job = ctx.client.job(ctx.args.job)
    if job["status"] != "completed":
        raise Failed(f"job {job['id']} is {job['status']}; only a completed job has an output to download")
    destination = Path(ctx.args.output or Path(job["output_path"]).name)
    if destination.exists() and not ctx.args.force:
        raise Failed(f"{destination} exists; remove it or pass --force")
    size = download_output(ctx.client, job["id"], destination, show_progress=ctx.show_progress)
    ctx.emit({"job_id": job["id"], "path": str(destination), "size": size, "sha256": job.get("output_sha256")},
             lambda d: f"saved {d['path']} ({d['size']} bytes, SHA-256 verified)")
    return errors.EXIT_OK


def cmd_watch(ctx: Context) -> int:
    return _watch(ctx, ctx.args.jobs)


def _watch(ctx: Context, job_ids: list[str]) -> int:
    """Redraw the jobs until each is completed, failed or cancelled, or ``--max-time`` passes."""
    ids = job_ids or _active_job_ids(ctx.client)
    if not ids:
        ctx.emit({"jobs": []}, lambda _: "no pending or processing jobs")
        return errors.EXIT_OK
    board = JobBoard(ctx.err if ctx.args.json else ctx.out)
    deadline = time.monotonic() + ctx.args.max_time
    while True:
        jobs = [ctx.client.job(job_id) for job_id in ids]
        if ctx.show_progress or all(j["status"] in TERMINAL for j in jobs):
            board.show(jobs)
        if all(j["status"] in TERMINAL for j in jobs):
            break
        if time.monotonic() >= deadline:
            raise TimedOut(f"gave up after {ctx.args.max_time:g} s; jobs still running: "
                           f"{', '.join(j['id'] for j in jobs if j['status'] not in TERMINAL)}")
        time.sleep(ctx.args.interval)
    if ctx.args.json:
        ctx.emit({"jobs": jobs}, str)
    bad = [j for j in jobs if j["status"] not in ("completed", "skipped")]  # skipped: nothing needed doing
    return errors.EXIT_FAILED if bad else errors.EXIT_OK


def _active_job_ids(client: Client) -> list[str]:
    ids: list[str] = []
    for status in ("processing", "pending"):
        ids += [j["id"] for j in client.json("GET", "/api/jobs", params={"status": status, "limit": 1000})["jobs"]]
    return ids


# -- arguments ------------------------------------------------------------------------------------


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the command; only the top level carries the defaults."""
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=d(os.environ.get("CONVERTER_URL") or DEFAULT_URL),
                        help="master URL (default: $CONVERTER_URL or %s)" % DEFAULT_URL)
    common.add_argument("--token", default=d(os.environ.get("CONVERTER_TOKEN") or None),
                        help="bearer token (default: $CONVERTER_TOKEN)")
    common.add_argument("--json", action="store_true", default=d(False), help="print JSON for scripts")
    common.add_argument("--timeout", type=_positive, default=d(30.0), help="seconds to wait for an answer")
    common.add_argument("--no-progress", action="store_true", default=d(False), help="no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="converterctl", parents=[_common_options(True)],
                                     description="Submit, follow and fetch jobs on a converter master.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options(False)]

    def command(name: str, handler: Callable[[Context], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=common, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    submit = command("submit", cmd_submit, "create a job from a file in storage, or upload one")
    submit.add_argument("source", nargs="?", metavar="SOURCE", help="source path relative to the storage root")
    submit.add_argument("--upload", metavar="FILE", help="upload this local file as the source")
    submit.add_argument("-p", "--profile", default=DEFAULT_PROFILE, help="profile (default: %(default)s)")
    submit.add_argument("-o", "--output", metavar="PATH", help="output path in storage (default for --upload: "
                                                               "converted/<name>.<ext>)")
    submit.add_argument("--id", help="job id (default: chosen for you)")
    submit.add_argument("--priority", type=_priority, metavar="N",
                        help="claims take the highest first (-1000..1000; default: the profile's, 0)")
    submit.add_argument("--no-resume", action="store_true",
                        help="with --upload: start a new upload even if an earlier run left this one unfinished")
    submit.add_argument("-w", "--watch", action="store_true", help="then watch the job until it ends")
    _watch_options(submit)

    listing = command("list", cmd_list, "list jobs, oldest first")
    listing.add_argument("-s", "--status", choices=STATUSES)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)

    command("show", cmd_show, "show one job").add_argument("job", metavar="JOB")
    command("cancel", cmd_cancel, "cancel a pending or processing job").add_argument("job", metavar="JOB")
    command("retry", cmd_retry, "requeue a failed or cancelled job").add_argument("job", metavar="JOB")
    priority = command("priority", cmd_priority, "change a pending job's priority (higher is claimed first)")
    priority.add_argument("job", metavar="JOB")
    priority.add_argument("priority", type=_priority, metavar="N", help="-1000..1000")
    command("workers", cmd_workers, "list the workers the master knows")
    worker = command("worker", lambda ctx: ctx.args.worker_handler(ctx), "pause or resume one worker")
    worker_actions = worker.add_subparsers(dest="worker_action", required=True, metavar="ACTION")
    for action, handler, text in (("pause", cmd_worker_pause, "finish its running jobs, then claim nothing"),
                                  ("resume", cmd_worker_resume, "claim jobs again")):
        sub = worker_actions.add_parser(action, parents=common, help=text, description=text)
        sub.set_defaults(worker_handler=handler)
        sub.add_argument("worker", metavar="WORKER_ID")
    queue = command("queue", cmd_queue, "pause or resume the whole queue, or show its state")
    queue.add_argument("action", choices=("status", "pause", "resume"), nargs="?", default="status",
                       help="pause: running jobs finish, nothing new is claimed; resume; status (default)")
    stats = command("stats", cmd_stats, "space saved by completed jobs: in total, by profile, worker and day")
    stats.add_argument("--days", type=int, default=30, help="days listed by day (default: %(default)s)")
    profiles = command("profiles", cmd_profiles, "list the conversion profiles (built-in and configured), with their "
                                                 "track rules")
    profiles.add_argument("name", nargs="?", metavar="NAME", help="show every field of this profile")
    webhooks = command("webhooks", cmd_webhooks, "webhook deliveries: the outbox, newest first")
    webhooks.add_argument("what", choices=("deliveries",), nargs="?", default="deliveries")
    webhooks.add_argument("-s", "--status", choices=("pending", "sending", "delivered", "failed"))
    webhooks.add_argument("-e", "--event", choices=("job.completed", "job.failed", "job.cancelled", "job.skipped",
                                                    "worker.lost", "queue.drained"))
    webhooks.add_argument("--limit", type=int, default=100)
    webhooks.add_argument("--offset", type=int, default=0)

    watch = command("watch", cmd_watch, "live progress of jobs until they end (default: all active jobs)")
    watch.add_argument("jobs", nargs="*", metavar="JOB")
    _watch_options(watch)

    download = command("download", cmd_download, "download a completed job's output (resumable, verified)")
    download.add_argument("job", metavar="JOB")
    download.add_argument("-o", "--output", metavar="FILE", help="where to save it (default: the output's name)")
    download.add_argument("-f", "--force", action="store_true", help="overwrite FILE if it exists")
    return parser


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls (default: 1)")
    parser.add_argument("--max-time", type=_positive, default=24 * 3600.0,
                        help="give up after this many seconds (exit 5; default: one day)")


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(f"must be {PRIORITY_MIN}..{PRIORITY_MAX}, got {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits with 2
    ctx = Context(args)
    try:
        return args.handler(ctx)
    except CliError as exc:
        print(f"converterctl: error: {exc}", file=ctx.err)
        return exc.exit_code
    except KeyboardInterrupt:
        print("converterctl: interrupted", file=ctx.err)
        return 130
