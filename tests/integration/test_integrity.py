"""SHA-256 end to end, Range/ETag resume, and digest checks on upload."""

import base64
import hashlib
import os

import pytest
import requests

from tests.faults.proxy import Fault, FaultProxy
from worker.client import MasterClient
from worker.retry import RetryPolicy

pytestmark = pytest.mark.integration

SIZE = 8 << 20


@pytest.fixture
def leased(master):
    data = os.urandom(SIZE)
    (master.root / "in").mkdir(parents=True)
    (master.root / "in" / "src.mkv").write_bytes(data)
    master.submit("in/src.mkv", "out/dst.mkv", job_id="i1")
    master.claim("w1")
    return data


def url(master):
    return f"{master.url}/api/worker/download-video?job_id=i1"


class TestDownloadHeaders:
    def test_repr_digest_and_strong_etag(self, master, leased):
        response = requests.get(url(master), timeout=10)
        digest = hashlib.sha256(leased).digest()
        assert response.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"
        assert response.headers["ETag"] == f'"sha256-{digest.hex()}"'
        assert response.headers["Accept-Ranges"] == "bytes"
        assert master.job("i1")["source_sha256"] == digest.hex()

    def test_range_gives_206_with_content_range(self, master, leased):
        response = requests.get(url(master), headers={"Range": "bytes=100-199"}, timeout=10)
        assert response.status_code == 206 and response.content == leased[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{SIZE}"

    def test_open_and_suffix_ranges(self, master, leased):
        assert requests.get(url(master), headers={"Range": f"bytes={SIZE - 5}-"}, timeout=10).content == leased[-5:]
        assert requests.get(url(master), headers={"Range": "bytes=-7"}, timeout=10).content == leased[-7:]

    def test_unsatisfiable_range_is_416(self, master, leased):
        response = requests.get(url(master), headers={"Range": f"bytes={SIZE}-"}, timeout=10)
        assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{SIZE}"
        assert response.json()["error"] == "range_not_satisfiable"

    def test_if_range_with_stale_etag_sends_everything(self, master, leased):
        response = requests.get(url(master), headers={"Range": "bytes=10-", "If-Range": '"old"'}, timeout=10)
        assert response.status_code == 200 and len(response.content) == SIZE

    def test_changed_source_gets_a_new_digest(self, master, leased):
        path = master.root / "in" / "src.mkv"
        path.write_bytes(b"new version")
        response = requests.get(url(master), timeout=10)
        assert response.content == b"new version"
        assert response.headers["ETag"] == f'"sha256-{hashlib.sha256(b"new version").hexdigest()}"'


class TestVerifiedResumableDownload:
    def client(self, base_url):
        return MasterClient(base_url, "w1", retry=RetryPolicy(3, 0.01, 2, 0.1), chunk_size=1 << 16)

    def test_cut_download_resumes_from_its_offset(self, master, leased, tmp_path):
        proxy = FaultProxy(int(master.url.rsplit(":", 1)[1]))
        proxy.add(Fault("down", after_bytes=3 << 20))
        client = self.client(proxy.url)
        target = tmp_path / "source.mkv"
        assert client.download_source_video("i1", target) == SIZE
        assert target.read_bytes() == leased and proxy.injected == 1
        served = client.metrics.transfer_bytes.labels("download")._value.get()
        assert served < SIZE + (1 << 20)  # resumed: not downloaded twice
        assert client.metrics.transfer_retries.labels("download")._value.get() == 1
        proxy.close()

    def test_flipped_byte_is_detected_and_the_file_downloaded_again(self, master, leased, tmp_path):
        proxy = FaultProxy(int(master.url.rsplit(":", 1)[1]))
        proxy.add(Fault("down", after_bytes=5 << 20, action="flip"))
        target = tmp_path / "source.mkv"
        assert self.client(proxy.url).download_source_video("i1", target) == SIZE
        assert target.read_bytes() == leased and proxy.injected == 1
        proxy.close()


class TestUploadDigest:
    def upload(self, master, payload, digest):
        header = f"sha-256=:{base64.b64encode(digest).decode()}:"
        return requests.post(f"{master.url}/api/worker/upload-video?job_id=i1", files={"video": payload},
                             headers={"Repr-Digest": header}, timeout=10)

    def test_matching_digest_is_stored_with_the_job(self, master, leased):
        response = self.upload(master, b"output", hashlib.sha256(b"output").digest())
        assert response.status_code == 200
        assert master.job("i1")["output_sha256"] == hashlib.sha256(b"output").hexdigest()

    def test_mismatch_is_400_and_nothing_is_renamed(self, master, leased):
        response = self.upload(master, b"output", hashlib.sha256(b"other").digest())
        assert response.status_code == 400 and response.json()["error"] == "digest_mismatch"
        assert not (master.root / "out").exists() or not any((master.root / "out").iterdir())
        assert master.job("i1")["status"] == "processing"

    def test_malformed_digest_is_400_before_any_byte_is_stored(self, master, leased):
        response = requests.post(f"{master.url}/api/worker/upload-video?job_id=i1", files={"video": b"x"},
                                 headers={"Repr-Digest": "sha-256=:not-base64!:"}, timeout=10)
        assert response.status_code == 400 and response.json()["error"] == "invalid_digest"

    def test_worker_client_sends_the_digest(self, master, leased, tmp_path):
        out = tmp_path / "output.mkv"
        out.write_bytes(b"z" * 100_000)
        master.client("w1").upload_converted_video("i1", out)
        assert master.job("i1")["output_sha256"] == hashlib.sha256(b"z" * 100_000).hexdigest()
