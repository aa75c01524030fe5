"""The HTTP side of every client of the master: one requests session per thread, large blocks, timeouts.

``MasterHttp.send`` returns the master's answer whatever its status, and raises ``MasterAway`` (no
answer) or ``TransferCut`` (the request failed on the way); judging an error answer is left to the
caller (``errors.Refused``). Subclasses word the failures their own way (``describe_failure``).
"""

from __future__ import annotations

import threading
from typing import Any

import requests
import requests.adapters

from converter_client.errors import MasterAway, TransferCut, TransferError

CONNECT_TIMEOUT = 10.0
CONTROL_TIMEOUT = 30.0
BLOCK = 1 << 20  # urllib3 reads a streamed request body ``blocksize`` bytes at a time


class LargeBlockAdapter(requests.adapters.HTTPAdapter):
    """urllib3 reads a streamed request body ``blocksize`` bytes at a time; its 16 KiB default is CPU-bound."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


class MasterHttp:
    """The master at ``base_url``. ``headers`` go on every request; ``read_timeout`` is the default one."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = CONTROL_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()  # a requests.Session is not safe to share across threads

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = LargeBlockAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self.headers)
            self._local.session = session
        return session

    def send(self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
             ) -> requests.Response:
        """``path`` is absolute on the master (``/api/...``); any status is returned, not raised."""
        timeout = (self.connect_timeout, self.read_timeout if read_timeout is None else read_timeout)
        try:
            return self.session.request(method, self.base_url + path, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            error = self.describe_failure(method, path, exc)
            if error is None:
                raise
            raise error from exc

    def describe_failure(self, method: str, path: str, exc: requests.RequestException) -> TransferError | None:
        """The error a request that got no answer raises instead of ``exc`` (None: ``exc`` itself)."""
        text = f"{method} {path}: {exc.__class__.__name__}: {exc}"
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return MasterAway(text)
        return TransferCut(text)
