"""The uploads converterctl started and has not finished, remembered between runs (as tus clients do).

``$XDG_CACHE_HOME/converterctl/uploads.json`` (default ``~/.cache/converterctl/uploads.json``) maps
what was asked (master URL, the file's absolute path, size and mtime, profile, output path, job id)
to the upload's URL on the master and the id of the job it will create, so running the same command
again resumes that upload. The file is replaced atomically; when it cannot be written the upload goes
on, only it cannot be resumed by a later run (one warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

MAX_AGE = 30 * 86400.0  # an entry the master gave no expiry for is dropped after this long


@dataclass(frozen=True)
class UploadKey:
    """What makes two runs "the same upload": the master, the file as it is now, and the job asked for."""

    master_url: str
    path: str
    size: int
    mtime_ns: int
    profile: str
    output_path: str | None
    job_id: str | None

    @classmethod
    def of(cls, master_url: str, path: Path, profile: str, output_path: str | None, job_id: str | None
           ) -> "UploadKey":
        stat = path.stat()
        return cls(master_url, str(path.resolve()), stat.st_size, stat.st_mtime_ns, profile, output_path, job_id)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RememberedUpload:
    location: str  # the upload's URL path on the master, as its Location header gave it
    job_id: str
    saved_at: float
    expires_at: float | None = None  # from Upload-Expires, when the master sends it

    def outdated(self, now: float) -> bool:
        if self.expires_at is not None:
            return self.expires_at < now
        return self.saved_at < now - MAX_AGE


def parse_upload_expires(value: str | None) -> float | None:
    """``Upload-Expires`` (an HTTP date) as a timestamp; None when absent or unreadable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def default_state_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "converterctl" / "uploads.json"


class UploadStateFile:
    """The JSON file of remembered uploads; reading or writing it never fails an upload."""

    def __init__(self, path: Path, warn: Callable[[str], None]):
        self.path = path
        self._warn = warn
        self._warned = False

    def lookup(self, key: UploadKey) -> RememberedUpload | None:
        entry = self._read().get(key.digest)
        return None if entry is None else _as_upload(entry)

    def remember(self, key: UploadKey, upload: RememberedUpload) -> None:
        entries = self._read()
        entries[key.digest] = {"key": asdict(key), **asdict(upload)}
        self._write(entries)

    def forget(self, key: UploadKey) -> None:
        entries = self._read()
        if entries.pop(key.digest, None) is not None:
            self._write(entries)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError) as exc:
            self._warn_once(f"ignoring the upload state file {self.path} ({_reason(exc)})")
            return {}
        uploads = data.get("uploads") if isinstance(data, dict) else None
        return dict(uploads) if isinstance(uploads, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        now = time.time()
        kept = {digest: entry for digest, entry in entries.items()
                if (upload := _as_upload(entry)) is not None and not upload.outdated(now)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _replace_atomically(self.path, json.dumps({"version": 1, "uploads": kept}, indent=1, sort_keys=True))
        except OSError as exc:
            self._warn_once(f"cannot save the upload state in {self.path} ({_reason(exc)}); "
                            f"an interrupted upload will start over next time")

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self._warn(message)


def _as_upload(entry: Any) -> RememberedUpload | None:
    """An entry of the file, or None for one this version cannot read (it is then dropped)."""
    try:
        expires = entry.get("expires_at")
        return RememberedUpload(str(entry["location"]), str(entry["job_id"]), float(entry["saved_at"]),
                                None if expires is None else float(expires))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _replace_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over: a reader sees the old or the new file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
