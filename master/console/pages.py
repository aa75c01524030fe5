"""The console's pages: overview, queue, job, workers, submit; the login form; the bulk retry of failed jobs.

Each page renders from the store through Tornado's templates (every value autoescaped). A page's live part is
also served alone with ``?part=1``, which ``static/console.js`` fetches when the events stream says the queue
changed. Changes go through the JSON API, with the session cookie and the XSRF token.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode

import tornado.web

from master.console import charts
from master.console.session import end_session, has_session, is_admin_token, start_session
from master.database import DatabaseUnavailable
from master.handlers.base import JOB_ID, Services
from master.states import JobStatus
from master.store import JobNotFound, StoreError

HERE = Path(__file__).parent
PAGE_SIZE = 50
SEARCH_MAX = 200
MAX_PAGE = 10**9
LOGIN_FAILURE_DELAY = 1.0  # seconds a wrong token waits for its answer: guessing one by one is slow
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


STATIC = HERE / "static"


def console_settings() -> dict[str, Any]:
    """The Application settings the console needs (its cookie secret is added by ``make_app``)."""
    return {"template_path": str(HERE / "templates"), "xsrf_cookies": True,
            "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict"}}


class StaticHandler(tornado.web.StaticFileHandler):
    """/console/static/: the script and the style sheet (no ``static_path`` setting, which would also route
    /favicon.ico and /robots.txt)."""

    def initialize(self, services: Services) -> None:  # type: ignore[override]
        super().initialize(path=str(STATIC))


def static_url(name: str) -> str:
    """The file's URL with its content's hash, so a browser never runs an old script with a new page."""
    return f"/console/static/{name}?v={tornado.web.StaticFileHandler.get_version({'static_path': str(STATIC)}, name)}"


class ConsoleHandler(tornado.web.RequestHandler):
    """An HTML page behind the admin's session (open without tokens on a loopback-only master)."""

    public = False
    redirects_to_login = True  # a page; False: a stream or a part, which answers 401

    def initialize(self, services: Services) -> None:
        self.services = services
        self.store = services.store

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if self.public or self.signed_in():
            return
        if (self.redirects_to_login and self.request.method in ("GET", "HEAD")
                and not self.get_query_argument("part", None)):
            self.redirect("/console/login?" + urlencode({"next": self.request.uri}))
        else:
            self.send_error(401)

    def signed_in(self) -> bool:
        return self.services.tokens.anonymous or has_session(self, self.services.tokens)

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(size=human_size, when=iso_time, duration=duration, name_of=name_of,
                         anonymous=self.services.tokens.anonymous, statuses=[s.value for s in JobStatus],
                         profiles=self.services.config.profiles, now=time.time(), charts=charts,
                         static_url=static_url)
        return namespace

    def page(self, template: str, **values: Any) -> None:
        """The whole page, or with ``?part=1`` its live part alone (``<name>_part.html``)."""
        if self.get_query_argument("part", None):
            template = template.replace(".html", "_part.html")
        self.render(template, **values)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = {401: "Sign in first.", 403: "The request was refused (XSRF token missing or wrong).",
                   404: "Not found.", 503: "The queue's database is unreachable; try again."}.get(
                       status_code, self._reason)
        if isinstance(exc, JobNotFound):
            message = f"No job with id {exc.job_id}."
        self.render("error.html", status=status_code, message=message)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, JobNotFound) and not self._finished:
            self.send_error(404, exc_info=(type(e), e, e.__traceback__))
            return
        if isinstance(e, DatabaseUnavailable) and not self._finished:
            self.send_error(503)
            return
        super()._handle_request_exception(e)


class RootHandler(ConsoleHandler):
    public = True

    def get(self) -> None:
        self.redirect("/console/")


class LoginHandler(ConsoleHandler):
    public = True

    def get(self) -> None:
        if self.signed_in():
            self.redirect(self._next())
            return
        self.render("login.html", next=self._next(), failed=False)

    async def post(self) -> None:
        if not is_admin_token(self.services.tokens, self.get_body_argument("token", "")):
            await asyncio.sleep(LOGIN_FAILURE_DELAY)
            self.set_status(403)
            self.render("login.html", next=self._next(), failed=True)
            return
        start_session(self, self.services.tokens)
        self.redirect(self._next())

    def _next(self) -> str:
        target = self.get_argument("next", "/console/")
        return target if target.startswith("/console/") and "//" not in target and "\\" not in target else "/console/"


class LogoutHandler(ConsoleHandler):
    public = True

    def post(self) -> None:
        end_session(self)
        self.redirect("/console/login")


class OverviewHandler(ConsoleHandler):
    def get(self) -> None:
        now = time.time()
        hours = self.store.finished_per_hour(24, now)
        self.page("overview.html", counts=self.store.counts_by_status(), paused_at=self.store.queue_paused_at(),
                  hours=charts.hourly(hours, 24, now), saved=self.store.space_saved(14, now))


class QueuePageHandler(ConsoleHandler):
    def get(self) -> None:
        status = self.get_query_argument("status", "")
        status = status if status in {s.value for s in JobStatus} else ""
        profile = self.get_query_argument("profile", "")
        worker = self.get_query_argument("worker", "")[:128]
        text = self.get_query_argument("q", "").strip()[:SEARCH_MAX]
        try:
            page = min(max(1, int(self.get_query_argument("page", "1"))), MAX_PAGE)
        except ValueError:
            page = 1
        jobs, total = self.store.search_jobs(status=JobStatus(status) if status else None, profile=profile or None,
                                             worker_id=worker or None, text=text or None, limit=PAGE_SIZE,
                                             offset=(page - 1) * PAGE_SIZE)
        total_pages = max(1, math.ceil(total / PAGE_SIZE))
        filters = {"status": status, "profile": profile, "worker": worker, "q": text}

        def page_url(number: int) -> str:
            return "/console/queue?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": number})

        self.page("queue.html", jobs=jobs, total=total, page=page, total_pages=total_pages, filters=filters,
                  page_url=page_url, workers=[w.id for w in self.store.list_workers()],
                  failed=self.store.counts_by_status()["failed"])


class JobPageHandler(ConsoleHandler):
    def get(self, job_id: str) -> None:
        if not JOB_ID.fullmatch(job_id):
            raise tornado.web.HTTPError(404)
        job = self.store.get_job(job_id)
        self.page("job.html", job=job, attempts=self.store.attempts_of(job.id),
                  eta=eta(job.progress, job.claimed_at, time.time()))


class WorkersPageHandler(ConsoleHandler):
    def get(self) -> None:
        now = time.time()
        window = self.services.config.jobs.lease_seconds + self.services.config.jobs.max_claim_wait
        workers = []
        for worker in self.store.list_workers():
            jobs = []
            for job_id in self.store.jobs_of_worker(worker.id):
                try:
                    jobs.append(self.store.get_job(job_id))
                except JobNotFound:
                    continue
            workers.append({"worker": worker, "online": now - worker.last_seen_at <= window,
                            "quarantined": worker.quarantined_until > now, "jobs": jobs})
        self.page("workers.html", workers=workers)


class SubmitPageHandler(ConsoleHandler):
    def get(self) -> None:
        profiles = list(self.services.config.profiles.items())
        self.render("submit.html", profile_table=profiles, in_bucket=self.services.storage.in_bucket)


class RetryFailedHandler(ConsoleHandler):
    """POST: every failed job back to pending (as ``POST /api/jobs/<id>/retry`` does each), in pages; a job whose
    output path is taken now is left failed and counted."""

    async def post(self) -> None:
        retried = skipped = 0
        while True:
            jobs, _total = self.store.list_jobs(status=JobStatus.FAILED, limit=200, offset=skipped)
            if not jobs:
                break
            for job in jobs:
                if job.output_path and await self.services.storage.exists(job.output_path):
                    skipped += 1
                    continue
                try:
                    self.store.retry(job.id)
                    retried += 1
                except StoreError:  # its output is another active job's now, or it was retried meanwhile
                    skipped += 1
            await asyncio.sleep(0)  # other requests between pages
        if retried:
            self.services.wakeup.send()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"retried": retried, "skipped": skipped})


def human_size(size: int | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def iso_time(epoch: float | None) -> str:
    """UTC ISO 8601; the browser shows it in its own zone (``console.js``)."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def name_of(path: str) -> str:
    return PurePosixPath(path).name


def eta(progress: float | None, claimed_at: float | None, now: float) -> float | None:
    """Seconds left at the pace so far, once there is some progress to judge it by."""
    if not progress or not claimed_at or progress >= 100:
        return None
    return (now - claimed_at) * (100 - progress) / progress
