"""The HTTP side: the shared ``converter_client`` transport, errors turned into ``ApiError`` / ``Unreachable``."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote

import requests

from converter_client.download import UnexpectedRange
from converter_client.errors import DigestMismatch, MasterAway, Refused, TransferError
from converter_client.transport import MasterHttp
from converter_common import protocol
from converter_common.version import package_version
from converterctl.errors import ApiError, CliError, Failed, Unreachable, UsageError

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class InvalidMasterUrl(TransferError):
    """requests cannot make a URL of the master's address."""


class Client(MasterHttp):
    """The master's API at ``base_url``; every call either returns a 2xx response or raises a ``CliError``.

    ``send`` (the shared transport's) returns error answers too and raises ``converter_client`` errors,
    for the shared tus and download clients; ``cli_errors`` turns those into converterctl's.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0):
        if not re.match(r"^https?://[^/]+", base_url):
            raise UsageError(f"master URL must start with http:// or https://, got {base_url!r}")
        headers = {"User-Agent": f"converterctl/{package_version()}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        super().__init__(base_url, headers, read_timeout=timeout)
        self.timeout = timeout

    def describe_failure(self, method: str, path: str, exc: requests.RequestException) -> TransferError | None:
        if isinstance(exc, requests.exceptions.InvalidURL):
            return InvalidMasterUrl(f"invalid master URL {self.base_url!r} ({exc})")
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return MasterAway(f"cannot reach the master at {self.base_url}: {connection_reason(exc)}")
        return None  # any other requests error is not one of converterctl's: raised as it is

    def request(self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
                ) -> requests.Response:
        with cli_errors():
            response = self.send(method, path, read_timeout=read_timeout, **kwargs)
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
        return self.json("GET", protocol.job_path(quote_id(job_id)))


@contextmanager
def cli_errors() -> Iterator[None]:
    """Raise converterctl's error (and so its exit status) for what ``converter_client`` raised."""
    try:
        yield
    except Refused as exc:
        raise api_error(exc.response) from None
    except InvalidMasterUrl as exc:
        raise UsageError(str(exc)) from None
    except UnexpectedRange as exc:
        raise Failed(f"the master sent an unexpected range ({exc.content_range!r})") from None
    except DigestMismatch as exc:
        raise Failed(str(exc)) from None
    except TransferError as exc:  # no answer, a cut transfer, offsets that disagree: worth another try
        raise Unreachable(str(exc)) from None


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


__all__ = ["Client", "CliError", "api_error", "cli_errors", "connection_reason", "quote_id"]
