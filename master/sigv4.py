"""AWS Signature Version 4 for S3: signed request headers and presigned URLs.

The master signs a handful of S3 requests and hands out presigned URLs; this module is all of SigV4 it needs
(https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html), path-style URLs only.
It replaces a boto3 client in the master: boto3 and its S3 models cost a master ~21 MB of its ~70 MB
(docs/benchmarks.md, "Object storage"). ``tests/unit/test_sigv4.py`` checks every signature against botocore's.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


@dataclass(frozen=True)
class Signer:
    """Signs requests to one S3 endpoint (``http(s)://host[:port]``) in one region."""

    endpoint: str
    region: str
    credentials: Credentials
    service: str = "s3"

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        """The endpoint's URL of ``path`` ('/bucket/key') with ``query``, encoded as it is signed."""
        encoded = canonical_query(query or {})
        return f"{self.endpoint.rstrip('/')}{canonical_path(path)}" + (f"?{encoded}" if encoded else "")

    def headers(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                payload_sha256: str = EMPTY_SHA256, now: float | None = None) -> dict[str, str]:
        """``headers`` plus ``Host``, ``x-amz-date``, ``x-amz-content-sha256`` and the ``Authorization`` that
        signs them all."""
        stamp = _stamp(now)
        signed = {**{name.lower(): value for name, value in headers.items()}, "host": self.host,
                  "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
        if self.credentials.session_token:
            signed["x-amz-security-token"] = self.credentials.session_token
        names = ";".join(sorted(signed))
        request = _canonical_request(method, path, query, signed, names, payload_sha256)
        signature = self._signature(stamp, request)
        authorization = (f"{ALGORITHM} Credential={self.credentials.access_key}/{self._scope(stamp)}, "
                         f"SignedHeaders={names}, Signature={signature}")
        return {**signed, "authorization": authorization}

    def presign(self, method: str, path: str, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, expires: int = 3600, now: float | None = None) -> str:
        """A URL that lets its holder send ``method`` to ``path`` until ``expires`` seconds pass; ``headers``
        are signed too, so the request must carry them exactly."""
        stamp = _stamp(now)
        signed = {**{name.lower(): value for name, value in (headers or {}).items()}, "host": self.host}
        names = ";".join(sorted(signed))
        full_query = {**(query or {}), "X-Amz-Algorithm": ALGORITHM,
                      "X-Amz-Credential": f"{self.credentials.access_key}/{self._scope(stamp)}",
                      "X-Amz-Date": stamp, "X-Amz-Expires": str(int(expires)), "X-Amz-SignedHeaders": names}
        if self.credentials.session_token:
            full_query["X-Amz-Security-Token"] = self.credentials.session_token
        request = _canonical_request(method, path, full_query, signed, names, UNSIGNED_PAYLOAD)
        return self.url(path, {**full_query, "X-Amz-Signature": self._signature(stamp, request)})

    def _scope(self, stamp: str) -> str:
        return f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"

    def _signature(self, stamp: str, canonical_request: str) -> str:
        to_sign = "\n".join([ALGORITHM, stamp, self._scope(stamp),
                             hashlib.sha256(canonical_request.encode()).hexdigest()])
        key = ("AWS4" + self.credentials.secret_key).encode()
        for part in (stamp[:8], self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def canonical_path(path: str) -> str:
    """S3's canonical URI: every byte but the unreserved ones and '/' percent-encoded, once."""
    return quote(path, safe="/-_.~")


def canonical_query(query: dict[str, str]) -> str:
    """Names and values percent-encoded (all but the unreserved characters), sorted by name."""
    pairs = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in query.items())
    return "&".join(f"{name}={value}" for name, value in pairs)


def _canonical_request(method: str, path: str, query: dict[str, str], headers: dict[str, str], names: str,
                       payload_sha256: str) -> str:
    lines = "".join(f"{name}:{' '.join(str(headers[name]).split())}\n" for name in sorted(headers))
    return "\n".join([method, canonical_path(path), canonical_query(query), lines, names, payload_sha256])


def _stamp(now: float | None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
