"""The HTTP side: one requests session, errors turned into ``ApiError`` / ``Unreachable``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import requests
import requests.adapters

from converter_common.version import package_version
from converterctl.errors import ApiError, Unreachable, UsageError

CONNECT_TIMEOUT = 10.0
BLOCK = 1 << 20  # urllib3 reads a streamed body 16 KiB at a time by default: CPU-bound for videos
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class LargeBlockAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


class Client:
    """The master's API at ``base_url``; every call either returns a 2xx response or raises a ``CliError``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0):
        if not re.match(r"^https?://[^/]+", base_url):
            raise UsageError(f"master URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        adapter = LargeBlockAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"converterctl/{package_version()}"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
                ) -> requests.Response:
        url = f"{self.base_url}{path}"
        timeout = (CONNECT_TIMEOUT, self.timeout if read_timeout is None else read_timeout)
        try:
            response = self.session.request(method, url, timeout=timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(f"cannot reach the master at {self.base_url}: {connection_reason(exc)}") from None
        except requests.exceptions.InvalidURL as exc:
            raise UsageError(f"invalid master URL {self.base_url!r} ({exc})") from None
        if response.status_code >= 400:
            raise api_error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "invalid_response", "the master's answer is not JSON") from None

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/jobs/{quote_id(job_id)}")


def api_error(response: requests.Response) -> ApiError:
    """The ``{"error", "message"}`` body as an ``ApiError``; anything else keeps the first line of its text."""
    try:
        body = response.json()
        return ApiError(response.status_code, str(body["error"]), str(body["message"]))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason
        return ApiError(response.status_code, "http_error", text or "no message")


def connection_reason(exc: Exception) -> str:
    """A short reason (``Connection refused``, ``timed out``) out of urllib3's nested exception text."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    match = _ERRNO.search(str(exc))
    if match:
        return match.group(1).strip()
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "connection closed by the server"
    return type(exc).__name__


def quote_id(job_id: str) -> str:
    """Job ids are ``[A-Za-z0-9._-]``; anything else is percent-encoded so it reaches the master as sent."""
    return quote(job_id, safe="")
