"""What the hostile-input catalogue shares: raw HTTP exchanges, the invariants every case checks.

Every case asserts the same four things:

* the status is the expected 4xx (or 507), never a 5xx, and the connection was answered (not just closed);
* the body is JSON ``{"error": code, "message": text}`` (HEAD answers have no body);
* nothing is left on disk under the storage root: no temp/part file, no new or changed file;
* no job changed: ``GET /api/jobs`` (every field, ``updated_at`` included) and the tus uploads are as before.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests

KiB = 1024
MiB = 1024 * 1024
ANSWER_TIMEOUT = 10.0  # a refusal that takes longer than this is not an answer
PROMPT = 5.0  # "promptly": a refusal that must come before the (never sent) rest of the body


@dataclass
class Answer:
    """A response, however it was obtained (requests or a raw socket)."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent: int = 0  # raw exchanges: body bytes the client had sent when the answer was complete
    elapsed: float = 0.0

    @classmethod
    def of(cls, response: requests.Response) -> "Answer":
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content,
                   elapsed=response.elapsed.total_seconds())

    def describe(self) -> str:
        text = self.body[:300].decode("utf-8", "replace")
        return f"HTTP {self.status} {self.headers.get('content-type', '(no content type)')} {text!r}"


class NoAnswer(AssertionError):
    """The master closed the connection, reset it, or said nothing in time."""


def exchange(base_url: str, head: bytes, body: Iterable[bytes] = (), *, timeout: float = ANSWER_TIMEOUT,
             keep_open: bool = True) -> Answer:
    """Send ``head`` (request line and headers, as raw bytes) and then ``body`` from another thread, while
    this one reads the answer. The body is sent until the answer arrives or the master stops reading;
    with ``keep_open`` the connection stays open after the body (a client that declared more than it sent)."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    answered = threading.Event()
    sent = [0]

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in body:
                if answered.is_set():
                    return
                sock.sendall(chunk)
                sent[0] += len(chunk)
            if not keep_open:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the master answered and closed, or reset: what it said is read below

    sender = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        answer = _read_answer(sock, started + timeout, head.split(b" ", 1)[0] == b"HEAD")
        answer.sent = sent[0]
        answer.elapsed = time.monotonic() - started
        return answer
    finally:
        answered.set()
        sock.close()
        sender.join(timeout)


def _read_answer(sock: socket.socket, deadline: float, head_request: bool) -> Answer:
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            status, headers = _parse_head(data[:end])
            length = headers.get("content-length")
            body_len = 0 if head_request or status in (204, 304) or 100 <= status < 200 else (
                int(length) if length is not None and length.isdigit() else None)
            if body_len is not None and len(data) >= end + 4 + body_len:
                return Answer(status, headers, data[end + 4:end + 4 + body_len])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"no complete answer within the time limit; got {data[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise NoAnswer(f"no complete answer within the time limit; got {data[:200]!r}") from None
        except ConnectionResetError:
            chunk = b""
            if not data:
                raise NoAnswer("the master reset the connection without an answer") from None
        if not chunk:
            if end >= 0:  # closed after the head: the body is what came (no Content-Length)
                status, headers = _parse_head(data[:end])
                return Answer(status, headers, data[end + 4:])
            raise NoAnswer(f"the master closed the connection without an answer (got {data[:200]!r})")
        data += chunk


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def request_head(method: str, target: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
                 raw_lines: Iterable[bytes] = ()) -> bytes:
    """Request line and headers as bytes; ``raw_lines`` are added verbatim (odd bytes, no colon, ...)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"Host: x"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in items]
    lines += list(raw_lines)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunked(payload: bytes, size: int = 64 * 1024) -> Iterable[bytes]:
    for start in range(0, len(payload), size):
        piece = payload[start:start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def repeated(total: int, piece: bytes = b"x" * 65536) -> Iterable[bytes]:
    """``total`` bytes in pieces, made lazily (a 2 MiB body is not built in memory first)."""
    while total > 0:
        yield piece[:total]
        total -= len(piece)


# --- the invariants -----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    jobs: list[dict[str, Any]]
    files: dict[str, tuple[int, int, int]]  # storage-relative path → (mode, size, mtime_ns)
    uploads: list[tuple[str, int]] = field(default_factory=list)  # tus upload id → offset


def snapshot(master, token: str | None = None) -> Snapshot:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(f"{master.url}/api/jobs?limit=1000", headers=headers, timeout=10)
    assert response.status_code == 200, f"listing jobs failed: {response.status_code} {response.text[:300]}"
    files = {}
    root = master.root
    for directory, dirs, names in os.walk(root, followlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            files[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    uploads = sorted((u.id, u.offset) for u in master.store.list_uploads())
    return Snapshot(sorted(response.json()["jobs"], key=lambda j: j["id"]), files, uploads)


def leftovers(master) -> list[str]:
    return sorted(str(p.relative_to(master.root)) for p in Path(master.root).rglob(".converter-*"))


SETTLE_TIMEOUT = 10.0


def check_unchanged(master, before: Snapshot, token: str | None = None, settle: bool = False,
                    ignore_mtime: bool = False) -> None:
    """No job changed, no upload changed, no file appeared, vanished or changed under the storage root
    (``ignore_mtime``: a file rewritten to the same size counts as unchanged, e.g. a PATCH rolled back).

    ``settle``: a handler may still be cleaning up after a cut or refused connection (a temp file, a PATCH
    rolled back): look again until everything is back as before, for up to ``SETTLE_TIMEOUT`` seconds."""
    deadline = time.monotonic() + (SETTLE_TIMEOUT if settle else 0.0)
    while True:
        problems = _changes(master, before, token, ignore_mtime)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    assert not problems, "; ".join(problems)


def _changes(master, before: Snapshot, token: str | None, ignore_mtime: bool) -> list[str]:
    after = snapshot(master, token)
    problems = []
    old_jobs = {j["id"]: j for j in before.jobs}
    new_jobs = {j["id"]: j for j in after.jobs}
    for job_id in sorted(set(old_jobs) | set(new_jobs)):
        if old_jobs.get(job_id) != new_jobs.get(job_id):
            old, new = old_jobs.get(job_id), new_jobs.get(job_id)
            if old is None:
                problems.append(f"job {job_id} was created ({new.get('status')})")
            elif new is None:
                problems.append(f"job {job_id} disappeared")
            else:
                changed = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
                problems.append(f"job {job_id} changed: {changed}")
    added = sorted(set(after.files) - set(before.files))
    removed = sorted(set(before.files) - set(after.files))
    modified = sorted(p for p in set(after.files) & set(before.files)
                      if after.files[p][:2 if ignore_mtime else 3] != before.files[p][:2 if ignore_mtime else 3])
    if added:
        problems.append(f"new files under the storage root: {added}")
    if removed:
        problems.append(f"files removed from the storage root: {removed}")
    if modified:
        problems.append("files changed under the storage root: " + ", ".join(
            f"{p} (size {before.files[p][1]} -> {after.files[p][1]}"
            + (", mtime changed)" if before.files[p][2] != after.files[p][2] else ")") for p in modified))
    if after.uploads != before.uploads:
        problems.append(f"tus uploads changed: {before.uploads} -> {after.uploads}")
    return problems


def check_refusal(answer: Answer, status: int | tuple[int, ...], code: str | tuple[str, ...] | None = None) -> dict:
    """Never a 5xx (but 507 where a full disk is expected); the expected status; a JSON ``{"error", "message"}`` body."""
    statuses = (status,) if isinstance(status, int) else status
    codes = (code,) if isinstance(code, str) else code
    assert answer.status < 500 or (answer.status == 507 and 507 in statuses), f"5xx for bad input: {answer.describe()}"
    assert answer.status in statuses, f"expected {'/'.join(map(str, statuses))}" + (
        f" {'/'.join(codes)}" if codes else "") + f", got {answer.describe()}"
    content_type = answer.headers.get("content-type", "")
    assert content_type.startswith("application/json"), f"not JSON: {answer.describe()}"
    try:
        body = json.loads(answer.body)
    except ValueError:
        raise AssertionError(f"body is not JSON: {answer.describe()}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str) \
        and body["message"], f"body is not {{error, message}}: {answer.describe()}"
    if codes:
        assert body["error"] in codes, f"expected error {'/'.join(codes)}, got {answer.describe()}"
    return body


def call(master, method: str, path: str, token: str | None = None, **kwargs) -> Answer:
    headers = dict(kwargs.pop("headers", {}) or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.request(method, master.url + path, headers=headers, timeout=ANSWER_TIMEOUT, **kwargs)
    except requests.ConnectionError as exc:
        raise NoAnswer(f"the master dropped the connection: {exc.__class__.__name__}") from None
    except requests.Timeout:
        raise NoAnswer(f"no answer within {ANSWER_TIMEOUT} s") from None
    return Answer.of(response)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary-7d3f") -> tuple[bytes, str]:
    """A multipart/form-data body: (name, filename or None for a plain field, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode("utf-8")
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"
