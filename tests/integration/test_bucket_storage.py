"""storage.backend s3 against a real S3 server (SeaweedFS): the same jobs as with local files, the bytes going
between worker and bucket over presigned URLs, and the seed's routes still working through the master.

The seed workflow runs on both backends (``backend`` fixture); the rest is what only a bucket has: checksummed
part PUTs the store refuses when corrupted, resuming from the parts it holds, expired URLs asked for again,
abandoned uploads aborted, never an object replaced, and clear answers when the store refuses or is away.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from converter_common import protocol
from tests.fixtures import Cluster, Process, ffmpeg_available, free_port, wait_for, write_yaml

pytestmark = [pytest.mark.integration]
needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg not installed")
MiB = 1 << 20


@pytest.fixture
def backend(any_cluster):
    return any_cluster


@pytest.fixture
def bucketed(tmp_path, seaweedfs):
    """A master that keeps its files in the bucket, with 5 MiB parts (and leases long enough for a test's hand-made
    worker, which sends no heartbeats, on a busy machine)."""
    cluster = Cluster(tmp_path, bucket=seaweedfs, s3={"part_size": "5MiB"}, lease_seconds=60)
    yield cluster
    cluster.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the seed workflow, on both backends --------------------------------------------------------------

@needs_ffmpeg
def test_a_job_converts_end_to_end_and_its_output_downloads_verified(backend, clip_2s):
    backend.put_source("in/clip.mp4", clip_2s)
    backend.submit("in/clip.mp4", "out/clip.mp4", "e2e")
    backend.add_worker("w1")
    job = backend.wait_status("e2e", "completed", "failed", timeout=120)
    assert job["status"] == "completed", job["error"]
    stored = backend.stored("out/clip.mp4")
    assert stored is not None and sha256(stored) == job["output_sha256"] and len(stored) == job["output_size"]
    answer = requests.get(f"{backend.url}/api/jobs/e2e/output", timeout=30)
    assert answer.status_code == 200 and answer.content == stored
    assert answer.headers["ETag"] == f'"sha256-{job["output_sha256"]}"'
    part = requests.get(f"{backend.url}/api/jobs/e2e/output", headers={"Range": "bytes=10-19"}, timeout=30)
    assert part.status_code == 206 and part.content == stored[10:20]
    if backend.bucket is not None:
        assert backend.bucket.metadata("out/clip.mp4")["sha256"] == job["output_sha256"]
        assert backend.bucket.open_uploads() == []
        direct = requests.get(f"{backend.url}/api/jobs/e2e/output", params={"presigned": "1"}, timeout=30)
        assert direct.history[0].status_code == 307 and direct.content == stored
        assert direct.history[0].headers["Repr-Digest"] == answer.headers["Repr-Digest"]
        rest = requests.get(direct.url, headers={"Range": "bytes=100-", "If-Range": direct.headers["ETag"]},
                            timeout=30)
        assert rest.status_code == 206 and rest.content == stored[100:]


def test_a_multipart_submission_and_the_seed_worker_routes_work_through_the_master(backend):
    """curl -F video=@... to create a job, curl -O of download-video, curl -F of upload-video: verbatim."""
    source = b"not really a video, but bytes are bytes" * 1000
    created = requests.post(f"{backend.url}/api/jobs", files={"video": ("My Clip.mkv", source)},
                            data={"profile": "h264-720p", "id": "seed"}, timeout=30)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["source_sha256"] == sha256(source) and backend.stored(job["source_path"]) == source
    claimed = requests.post(f"{backend.url}{protocol.WORKER_CLAIM}", json={"worker_id": "curl", "wait": 5},
                            timeout=30).json()
    assert claimed["id"] == "seed" and ("bucket" in claimed) == (backend.bucket is not None)
    download = requests.get(f"{backend.url}{protocol.WORKER_DOWNLOAD}", params={"job_id": "seed"}, timeout=30)
    assert download.status_code == 200 and download.content == source
    resumed = requests.get(f"{backend.url}{protocol.WORKER_DOWNLOAD}", params={"job_id": "seed"},
                           headers={"Range": f"bytes={len(source) - 5}-"}, timeout=30)
    assert resumed.status_code == 206 and resumed.content == source[-5:]
    output = b"converted bytes" * 999
    uploaded = requests.post(f"{backend.url}{protocol.WORKER_UPLOAD}", params={"job_id": "seed"},
                             files={"video": ("out.mp4", output)}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    assert backend.job("seed")["status"] == "completed"
    assert backend.stored(job["output_path"]) == output
    assert not list((backend.root / "staging").glob("*")) if (backend.root / "staging").exists() else True


def test_a_job_for_a_missing_source_or_an_existing_output_is_refused(backend, tmp_path):
    missing = requests.post(f"{backend.url}/api/jobs", json={"source_path": "nope.mp4", "output_path": "o.mp4",
                                                            "profile": "h264-720p"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"] == "source_not_found"
    (tmp_path / "a.mp4").write_bytes(b"a")
    backend.put_source("a.mp4", tmp_path / "a.mp4")
    backend.put_source("taken.mp4", tmp_path / "a.mp4")
    taken = requests.post(f"{backend.url}/api/jobs", json={"source_path": "a.mp4", "output_path": "taken.mp4",
                                                          "profile": "h264-720p"}, timeout=30)
    assert taken.status_code == 409 and taken.json()["error"] == "output_exists"
    escaping = requests.post(f"{backend.url}/api/jobs", json={"source_path": "../a.mp4", "output_path": "o.mp4",
                                                             "profile": "h264-720p"}, timeout=30)
    assert escaping.status_code == 400 and escaping.json()["error"] == "invalid_path"


# -- presigned transfers (bucket only) ------------------------------------------------------------------

class PresignedWorker:
    """A worker speaking the bucket protocol by hand, to cut, corrupt and delay where a test needs."""

    def __init__(self, cluster: Cluster, worker_id: str = "hand") -> None:
        self.cluster, self.worker_id = cluster, worker_id
        self.headers = {protocol.WORKER_ID_HEADER: worker_id}

    def claim(self) -> dict:
        answer = requests.post(f"{self.cluster.url}{protocol.WORKER_CLAIM}",
                               json={"worker_id": self.worker_id, "wait": 5}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def ask(self, route: str, job_id: str, body: dict | None = None) -> requests.Response:
        return requests.post(f"{self.cluster.url}{route}", params={"job_id": job_id}, json=body or {},
                             headers=self.headers, timeout=30)

    @staticmethod
    def declare(data: bytes, part_size: int) -> dict:
        parts = [data[i:i + part_size] for i in range(0, len(data), part_size)] or [b""]
        return {"size": len(data), "sha256": sha256(data), "parts": [sha256(p) for p in parts]}


def submit_one(cluster: Cluster, job_id: str = "p1") -> None:
    cluster.bucket.put("in/src.mkv", b"source bytes", {"sha256": sha256(b"source bytes")})
    cluster.submit("in/src.mkv", f"out/{job_id}.mp4", job_id)


def put(part: dict, data: bytes) -> requests.Response:
    return requests.put(part["url"], data=data, headers=part["headers"], timeout=30)


def test_an_upload_resumes_from_the_parts_the_store_holds(bucketed):
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    job = hand.claim()
    part_size = job["bucket"]["part_size"]
    assert part_size == 5 * MiB
    data = bytes(range(256)) * (11 * MiB // 256)  # three parts: 5 + 5 + 1 MiB
    declared = hand.declare(data, part_size)
    plan = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()
    assert plan["stored"] == [] and [p["number"] for p in plan["parts"]] == [1, 2, 3]
    assert put(plan["parts"][0], data[:part_size]).status_code == 200
    early = hand.ask(protocol.WORKER_OUTPUT_COMPLETE, "p1", {"size": len(data), "sha256": declared["sha256"]})
    assert early.status_code == 409 and early.json()["error"] == "parts_incomplete"
    again = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()  # after a cut: only what is missing
    assert again["stored"] == [1] and [p["number"] for p in again["parts"]] == [2, 3]
    for part in again["parts"]:
        first = (part["number"] - 1) * part_size
        assert put(part, data[first:first + part_size]).status_code == 200
    done = hand.ask(protocol.WORKER_OUTPUT_COMPLETE, "p1", {"size": len(data), "sha256": declared["sha256"]})
    assert done.status_code == 200, done.text
    assert bucketed.job("p1")["status"] == "completed" and bucketed.stored("out/p1.mp4") == data
    assert bucketed.bucket.open_uploads() == []


def test_a_part_corrupted_on_the_way_is_refused_by_the_store_and_sent_again(bucketed):
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    hand.claim()
    data = b"the converted output" * 1000
    declared = hand.declare(data, 5 * MiB)
    part = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()["parts"][0]
    corrupted = put(part, b"X" + data[1:])
    assert corrupted.status_code == 400 and b"BadDigest" in corrupted.content
    plan = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()
    assert plan["stored"] == [] and put(plan["parts"][0], data).status_code == 200
    assert hand.ask(protocol.WORKER_OUTPUT_COMPLETE, "p1", {"size": len(data), "sha256": declared["sha256"]}).ok
    assert bucketed.stored("out/p1.mp4") == data


def test_an_expired_url_is_refused_and_asking_again_gives_a_working_one(tmp_path, seaweedfs):
    cluster = Cluster(tmp_path, bucket=seaweedfs, s3={"presign_expiry": 1})
    try:
        submit_one(cluster)
        hand = PresignedWorker(cluster)
        hand.claim()
        url = hand.ask(protocol.WORKER_SOURCE_URL, "p1").json()["url"]
        expired = wait_for(lambda: (r := requests.get(url, timeout=10)).status_code == 403 and r.text, 10,
                           what="the presigned URL to expire")
        assert "expired" in expired.lower()
        fresh = hand.ask(protocol.WORKER_SOURCE_URL, "p1").json()
        assert requests.get(fresh["url"], timeout=10).content == b"source bytes"
        assert fresh["sha256"] == sha256(b"source bytes") and fresh["size"] == len(b"source bytes")
    finally:
        cluster.stop()


def test_an_abandoned_upload_is_aborted_and_leaves_no_parts(tmp_path, seaweedfs):
    bucketed = Cluster(tmp_path, bucket=seaweedfs, s3={"part_size": "5MiB"}, lease_seconds=2)
    try:
        _abandon_an_upload(bucketed)
    finally:
        bucketed.stop()


def _abandon_an_upload(bucketed: Cluster) -> None:
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    hand.claim()
    data = b"half an output" * 100
    plan = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", hand.declare(data, 5 * MiB)).json()
    assert put(plan["parts"][0], data).status_code == 200
    assert bucketed.bucket.open_uploads() == [bucketed.bucket.key("out/p1.mp4")]
    failed = hand.ask(protocol.WORKER_FAIL, "p1", {"worker_id": "hand", "error": "gave up", "retryable": False,
                                                   "cause": "source"})
    assert failed.json()["status"] == "failed"
    wait_for(lambda: bucketed.bucket.open_uploads() == [], 20, 0.2, "the reaper to abort the abandoned upload")
    assert bucketed.stored("out/p1.mp4") is None


def test_an_object_at_the_output_is_never_replaced(bucketed):
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    hand.claim()
    data = b"ours"
    declared = hand.declare(data, 5 * MiB)
    part = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()["parts"][0]
    assert put(part, data).status_code == 200
    bucketed.bucket.put("out/p1.mp4", b"someone else's file, written meanwhile")
    refused = hand.ask(protocol.WORKER_OUTPUT_COMPLETE, "p1", {"size": 4, "sha256": declared["sha256"]})
    assert refused.status_code == 409 and refused.json()["error"] == "output_exists"
    assert bucketed.stored("out/p1.mp4") == b"someone else's file, written meanwhile"
    assert bucketed.job("p1")["status"] == "failed" and bucketed.bucket.open_uploads() == []


def test_bucket_routes_refuse_what_does_not_fit(bucketed):
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    hand.claim()
    wrong_count = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", {"size": 11 * MiB, "sha256": "0" * 64,
                                                                  "parts": ["0" * 64]})
    assert wrong_count.status_code == 400 and wrong_count.json()["error"] == "invalid_field"
    stranger = requests.post(f"{bucketed.url}{protocol.WORKER_SOURCE_URL}", params={"job_id": "p1"},
                             headers={protocol.WORKER_ID_HEADER: "someone-else"}, timeout=30)
    assert stranger.status_code == 409 and stranger.json()["error"] == "not_lease_owner"
    shared = requests.post(f"{bucketed.url}{protocol.WORKER_COMPLETE}", params={"job_id": "p1"},
                           json={"worker_id": "hand", "size": 1, "sha256": "0" * 64}, timeout=30)
    assert shared.status_code == 400 and shared.json()["error"] == "not_with_bucket"


# -- a user's source sent straight to the bucket ---------------------------------------------------------

def test_a_source_upload_resumes_from_stored_parts_and_creates_its_job_once(bucketed):
    data = bytes(range(256)) * (6 * MiB // 256)  # two parts: 5 + 1 MiB
    declared = PresignedWorker.declare(data, 5 * MiB)
    assert requests.get(f"{bucketed.url}{protocol.SOURCE_UPLOADS}", timeout=10).json() == {"part_size": 5 * MiB}
    created = requests.post(f"{bucketed.url}{protocol.SOURCE_UPLOADS}", timeout=30, json={
        **declared, "profile": "h264-720p", "id": "up1", "filename": "Holiday.MOV"})
    assert created.status_code == 201, created.text
    plan = created.json()
    assert plan["job_id"] == "up1" and [p["number"] for p in plan["parts"]] == [1, 2]
    assert put(plan["parts"][0], data[:5 * MiB]).status_code == 200
    twice = requests.post(f"{bucketed.url}{protocol.SOURCE_UPLOADS}", timeout=30, json={
        **declared, "profile": "h264-720p", "id": "up1"})
    assert twice.status_code == 409 and twice.json()["error"] == "duplicate_job"
    location = f"{bucketed.url}{protocol.SOURCE_UPLOADS}/{plan['upload_id']}"
    early = requests.post(f"{location}/complete", json={}, timeout=30)
    assert early.status_code == 409 and early.json()["error"] == "parts_incomplete"
    other = requests.post(location, json=PresignedWorker.declare(b"another file", 5 * MiB), timeout=30)
    assert other.status_code == 400 and other.json()["error"] == "invalid_field"
    resumed = requests.post(location, json=declared, timeout=30).json()
    assert resumed["stored"] == [1] and [p["number"] for p in resumed["parts"]] == [2]
    assert put(resumed["parts"][0], data[5 * MiB:]).status_code == 200
    done = requests.post(f"{location}/complete", json={}, timeout=30)
    assert done.status_code == 201, done.text
    job = done.json()
    assert job["id"] == "up1" and job["source_sha256"] == declared["sha256"] and job["source_size"] == len(data)
    assert job["source_path"].startswith("incoming/") and job["source_path"].endswith(".mov")
    assert job["output_path"] == "converted/Holiday.mp4" and bucketed.stored(job["source_path"]) == data
    again = requests.post(f"{location}/complete", json={}, timeout=30)
    assert again.status_code == 404 and again.json()["error"] == "upload_not_found"
    assert bucketed.bucket.open_uploads() == []


def test_an_abandoned_source_upload_expires_and_its_parts_are_aborted(tmp_path, seaweedfs):
    cluster = Cluster(tmp_path, bucket=seaweedfs, lease_seconds=1, upload_expiry=1)
    try:
        declared = PresignedWorker.declare(b"half", 5 * MiB)
        plan = requests.post(f"{cluster.url}{protocol.SOURCE_UPLOADS}", timeout=30, json={
            **declared, "profile": "h264-720p", "id": "gone"}).json()
        assert put(plan["parts"][0], b"half").status_code == 200 and len(cluster.bucket.open_uploads()) == 1
        wait_for(lambda: cluster.bucket.open_uploads() == [], 20, 0.2, "the expired upload's parts to be aborted")
        assert requests.post(f"{cluster.url}{protocol.SOURCE_UPLOADS}/{plan['upload_id']}", json=declared,
                             timeout=30).status_code == 404
        assert requests.get(f"{cluster.url}/api/jobs/gone", timeout=10).status_code == 404
    finally:
        cluster.stop()


def test_source_uploads_are_a_bucket_route(any_cluster):
    answer = requests.get(f"{any_cluster.url}{protocol.SOURCE_UPLOADS}", timeout=10)
    if any_cluster.bucket is None:
        assert answer.status_code == 400 and answer.json()["error"] == "not_with_bucket"
    else:
        assert answer.status_code == 200
    empty = requests.post(f"{any_cluster.url}{protocol.SOURCE_UPLOADS}", timeout=10, json={
        "size": 0, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "parts": [],
        "profile": "h264-720p"})
    assert empty.status_code == 400


def test_objects_dropped_under_the_inbox_prefix_become_jobs_once_per_version(tmp_path, seaweedfs):
    cluster = Cluster(tmp_path, bucket=seaweedfs, watch={"inbox": "inbox", "stable_seconds": 0.3, "interval": 0.1})
    try:
        cluster.bucket.put("inbox/Show S01E01.mkv", b"first version")
        cluster.bucket.put("inbox/.hidden", b"ignored")
        cluster.bucket.put("elsewhere/x.mkv", b"not in the inbox")

        def jobs() -> list[dict]:
            return requests.get(f"{cluster.url}/api/jobs", timeout=10).json()["jobs"]

        first = wait_for(lambda: jobs(), 20, what="the inbox object to become a job")[0]
        assert first["source_path"] == "inbox/Show S01E01.mkv" and first["output_path"] == "converted/Show S01E01.mp4"
        assert first["source_sha256"] == sha256(b"first version") and first["id"].startswith("watch-")
        cluster.bucket.put("inbox/Show S01E01.mkv", b"second version, re-exported")
        both = wait_for(lambda: len(jobs()) == 2 and jobs(), 20, what="the new version to become a job")
        assert {job["source_sha256"] for job in both} == {sha256(b"first version"),
                                                          sha256(b"second version, re-exported")}
        newest = next(job for job in both if job["id"] != first["id"])
        assert newest["output_path"] == f"converted/Show S01E01-{newest['id']}.mp4"  # never the first one's
        scans = requests.get(f"{cluster.url}/metrics", timeout=10).text
        assert len(jobs()) == 2 and "converter_master_jobs_submitted_total 2.0" in scans
    finally:
        cluster.stop()


# -- the store refusing or away -------------------------------------------------------------------------

def test_a_store_that_refuses_the_master_gets_a_clear_502_and_no_job(tmp_path, seaweedfs):
    secret = tmp_path / "s3-credentials"
    secret.write_text("[default]\naws_access_key_id = converter-test\naws_secret_access_key = wrong\n")
    secret.chmod(0o600)
    with standalone_master(tmp_path, _storage_with(tmp_path, seaweedfs)) as url:
        answer = requests.post(f"{url}/api/jobs", json={"source_path": "a.mp4", "output_path": "o.mp4",
                                                       "profile": "h264-720p"}, timeout=30)
        assert answer.status_code == 502 and answer.json()["error"] == "object_store_refused"
        assert requests.get(f"{url}/api/jobs", timeout=10).json()["total"] == 0


@contextlib.contextmanager
def standalone_master(tmp_path, storage: dict):
    port = free_port()
    write_yaml(tmp_path / "master.yaml", {"server": {"host": "127.0.0.1", "port": port}, "storage": storage,
                                          "database": {"path": str(tmp_path / "master.db")}})
    master = Process("converter-master", tmp_path / "master.yaml", tmp_path / "master.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 30, what="master to listen")
        yield url
    finally:
        master.stop()


def _storage_with(tmp_path, seaweedfs) -> dict:
    return {"backend": "s3", "root": str(tmp_path / "storage"),
            "s3": {"endpoint": seaweedfs.endpoint, "bucket": seaweedfs.bucket, "prefix": seaweedfs.prefix(),
                   "credentials_file": str(tmp_path / "s3-credentials")}}


@pytest.mark.parametrize("storage, message", [
    ({"backend": "s3"}, "storage.s3.endpoint: is required with backend s3"),
    ({"backend": "cloud"}, "storage.backend: must be local or s3"),
    ({"backend": "s3", "s3": {"endpoint": "ftp://x", "bucket": "media"}}, "storage.s3.endpoint: must be http(s)"),
    ({"backend": "s3", "s3": {"endpoint": "http://127.0.0.1:1", "bucket": "media", "part_size": "1MiB"}},
     "storage.s3.part_size: must be 5MiB..5GiB"),
])
def test_a_bad_storage_section_is_a_one_line_config_error(tmp_path, storage, message):
    config = write_yaml(tmp_path / "m.yaml", {"storage": storage})
    result = check_config(config)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def check_config(config) -> subprocess.CompletedProcess:
    master = Path(sys.executable).parent / "converter-master"
    return subprocess.run([str(master), "--config", str(config), "--check-config"], capture_output=True, text=True,
                          timeout=60)


def test_a_credentials_file_others_can_read_is_refused(tmp_path):
    secret = tmp_path / "creds"
    secret.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    secret.chmod(0o644)
    config = write_yaml(tmp_path / "m.yaml", {"storage": {"backend": "s3", "s3": {
        "endpoint": "http://127.0.0.1:1", "bucket": "media", "credentials_file": str(secret)}}})
    result = check_config(config)
    assert result.returncode == 2 and "readable by others (mode 644); chmod 600 it" in result.stderr


def test_a_store_that_is_away_gets_503_with_retry_after(tmp_path, seaweedfs):
    storage = _storage_with(tmp_path, seaweedfs)
    seaweedfs.credentials_file(tmp_path)
    storage["s3"]["endpoint"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with standalone_master(tmp_path, storage) as url:
        answer = requests.post(f"{url}/api/jobs", json={"source_path": "a.mp4", "output_path": "o.mp4",
                                                       "profile": "h264-720p"}, timeout=60)
        assert answer.status_code == 503 and answer.json()["error"] == "object_store_unavailable"
        assert answer.headers["Retry-After"] == "5"


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_an_empty_output_is_one_empty_part(bucketed):
    submit_one(bucketed)
    hand = PresignedWorker(bucketed)
    hand.claim()
    declared = hand.declare(b"", 5 * MiB)
    plan = hand.ask(protocol.WORKER_OUTPUT_PARTS, "p1", declared).json()
    assert [p["number"] for p in plan["parts"]] == [1] and put(plan["parts"][0], b"").status_code == 200
    done = hand.ask(protocol.WORKER_OUTPUT_COMPLETE, "p1", {"size": 0, "sha256": declared["sha256"]})
    assert done.status_code == 200, done.text
    assert bucketed.stored("out/p1.mp4") == b""
