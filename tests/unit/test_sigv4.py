"""master.sigv4 signs exactly as botocore does (the reference implementation), for the requests the master makes.

botocore is only in the test and bench environments; the master itself does without it.
"""

from __future__ import annotations

import datetime
from urllib.parse import parse_qsl, urlsplit

import pytest

botocore_auth = pytest.importorskip("botocore.auth")
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials as BotoCredentials  # noqa: E402

from master.sigv4 import Credentials, Signer, canonical_path  # noqa: E402

NOW = 1_796_300_000.0  # 2026-12-03
ENDPOINT = "http://127.0.0.1:8333"


@pytest.fixture(params=[None, "session-token/with+odd=chars"], ids=["keys", "session-token"])
def credentials(request):
    return Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", request.param)


@pytest.fixture
def frozen_botocore(monkeypatch):
    frozen = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).replace(tzinfo=None)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: frozen)


def boto(credentials: Credentials) -> BotoCredentials:
    return BotoCredentials(credentials.access_key, credentials.secret_key, credentials.session_token)


KEYS = ["in/plain.mkv", "out/é x (1).mp4", "a/b+c=d&e?f#g.mkv", "deep/~tilde/%41percent.mkv"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", [{}, {"uploadId": "abc/def+=", "partNumber": "7"},
                                   {"response-content-disposition": "attachment; filename*=UTF-8''%C3%A9.mp4"}])
def test_a_presigned_url_is_the_one_botocore_makes(credentials, frozen_botocore, key, query):
    headers = {"x-amz-checksum-sha256": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="} if "partNumber" in query else {}
    ours = Signer(ENDPOINT, "us-east-1", credentials).presign("PUT", f"/media/{key}", query, headers, 900, now=NOW)

    request = AWSRequest(method="PUT", url=ENDPOINT + canonical_path(f"/media/{key}"), params=query,
                         headers=headers)
    botocore_auth.S3SigV4QueryAuth(boto(credentials), "s3", "us-east-1", expires=900).add_auth(request)
    theirs = request.prepare().url
    assert urlsplit(ours).path == urlsplit(theirs).path
    assert sorted(parse_qsl(urlsplit(ours).query)) == sorted(parse_qsl(urlsplit(theirs).query))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method,query,headers", [
    ("HEAD", {}, {}),
    ("GET", {"list-type": "2", "prefix": "t-1/in/", "continuation-token": "x+y/z=="}, {}),
    ("POST", {"uploads": ""}, {"x-amz-meta-sha256": "ab" * 32}),
    ("POST", {"uploadId": "u1"}, {"If-None-Match": "*", "Content-Type": "application/xml"}),
    ("GET", {}, {"Range": "bytes=100-"}),
])
def test_signed_headers_are_the_ones_botocore_makes(credentials, frozen_botocore, key, method, query, headers):
    payload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ours = Signer(ENDPOINT, "eu-west-3", credentials).headers(method, f"/media/{key}", query, headers, payload,
                                                              now=NOW)

    request = AWSRequest(method=method, url=ENDPOINT + canonical_path(f"/media/{key}"), params=query,
                         headers={**headers, "X-Amz-Content-SHA256": payload})
    botocore_auth.S3SigV4Auth(boto(credentials), "s3", "eu-west-3").add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]


def test_credentials_never_show_the_secret():
    assert "wJalr" not in repr(Credentials("AKID", "wJalrXUtnFEMI"))
