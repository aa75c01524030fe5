"""The resumable upload endpoint: tus 1.0.0 core, creation, checksum and termination, with a real tus client."""

import base64
import hashlib
import os

import pytest
import requests
from tusclient import client as tus_client

from tests.fixtures import start_request, wait_for

pytestmark = pytest.mark.integration

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def job(master):
    (master.root / "in").mkdir()
    (master.root / "in" / "a.mp4").write_bytes(b"source")
    master.submit("in/a.mp4", "out/result.mp4", job_id="t1")
    master.claim("w1")
    return "t1"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def create(master, length, job_id="t1", sha=None, **headers):
    metadata = f"job_id {b64(job_id.encode())}" + (f",sha256 {b64(sha)}" if sha else "")
    return requests.post(f"{master.url}/api/uploads", headers={**TUS, "Upload-Length": str(length),
                                                               "Upload-Metadata": metadata, **headers}, timeout=10)


def patch(master, location, offset, data, **headers):
    return requests.patch(master.url + location, data=data, timeout=10, headers={
        **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream", **headers})


def start_patch(master, location, data, *, sent):
    """A PATCH from offset 0 declaring all of ``data`` but sending only its first ``sent`` bytes (so far)."""
    return start_request(master.url, "PATCH", location, {
        **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(len(data))}, data[:sent])


def received_bytes(master):
    return master.metrics.bytes_received._value.get()


def wait_received(master, before, count):
    """Until the master has read ``count`` more body bytes (so a PATCH is receiving, not just connected)."""
    wait_for(lambda: received_bytes(master) - before >= count, 10, 0.01, f"the master to receive {count} bytes")


def head_offset(master, location):
    return int(requests.head(master.url + location, headers=TUS, timeout=10).headers["Upload-Offset"])


def temp_files(master):
    return list(master.root.rglob(".converter-tus-*"))


def test_options_advertises_the_extensions(master):
    response = requests.options(f"{master.url}/api/uploads", timeout=10)
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {"creation", "checksum", "termination", "expiration"}
    assert "sha256" in response.headers["Tus-Checksum-Algorithm"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_patch_larger_than_the_receive_buffers_arrives_whole(master, job, framing):
    """A Content-Length body is received straight into the writer's buffers, a chunked one through
    data_received: both store every byte, across several buffers, in order."""
    data = os.urandom(5_000_000 + 123)  # more than two 2 MiB buffers, and not a multiple of the block size
    location = create(master, len(data), sha=hashlib.sha256(data).digest()).headers["Location"]
    body = data if framing == "content-length" else (data[i:i + 70_000] for i in range(0, len(data), 70_000))
    received = received_bytes(master)
    answer = patch(master, location, 0, body)
    assert answer.status_code == 204 and answer.headers["Upload-Offset"] == str(len(data))
    assert (master.root / "out" / "result.mp4").read_bytes() == data
    assert received_bytes(master) - received == len(data)
    assert master.job(job)["status"] == "completed"


def test_create_patch_in_two_pieces_completes_the_job(master, job):
    data = os.urandom(300_000)
    created = create(master, len(data), sha=hashlib.sha256(data).digest())
    assert created.status_code == 201 and created.headers["Tus-Resumable"] == "1.0.0"
    location = created.headers["Location"]
    first = patch(master, location, 0, data[:100_000])
    assert first.status_code == 204 and first.headers["Upload-Offset"] == "100000"
    assert head_offset(master, location) == 100_000
    assert master.job(job)["status"] == "processing"
    second = patch(master, location, 100_000, data[100_000:])
    assert second.status_code == 204 and second.headers["Upload-Offset"] == str(len(data))
    assert (master.root / "out" / "result.mp4").read_bytes() == data
    done = master.job(job)
    assert (done["status"], done["output_sha256"]) == ("completed", hashlib.sha256(data).hexdigest())
    assert not temp_files(master)


def test_wrong_offset_is_409(master, job):
    location = create(master, 10).headers["Location"]
    response = patch(master, location, 5, b"12345")
    assert response.status_code == 409 and response.json()["error"] == "offset_mismatch"


def test_missing_tus_version_is_412(master, job):
    response = requests.post(f"{master.url}/api/uploads", headers={"Upload-Length": "5"}, timeout=10)
    assert response.status_code == 412


def test_per_patch_checksum_mismatch_is_460_and_discarded(master, job):
    location = create(master, 10).headers["Location"]
    bad = patch(master, location, 0, b"12345", **{"Upload-Checksum": f"sha256 {b64(hashlib.sha256(b'x').digest())}"})
    assert bad.status_code == 460
    assert head_offset(master, location) == 0
    good = patch(master, location, 0, b"12345", **{"Upload-Checksum": f"sha1 {b64(hashlib.sha1(b'12345').digest())}"})
    assert good.status_code == 204 and head_offset(master, location) == 5


def test_whole_file_digest_mismatch_refuses_the_output(master, job):
    location = create(master, 4, sha=hashlib.sha256(b"good").digest()).headers["Location"]
    response = patch(master, location, 0, b"evil")
    assert response.status_code == 400 and response.json()["error"] == "digest_mismatch"
    assert not (master.root / "out" / "result.mp4").exists() and not temp_files(master)
    assert master.job(job)["status"] == "processing"


def test_termination_removes_the_upload(master, job):
    location = create(master, 10).headers["Location"]
    assert requests.delete(master.url + location, headers=TUS, timeout=10).status_code == 204
    assert requests.head(master.url + location, headers=TUS, timeout=10).status_code == 404
    assert not temp_files(master)


def test_cut_patch_keeps_its_bytes_and_resumes(master, job):
    data = os.urandom(2_000_000)
    location = create(master, len(data), sha=hashlib.sha256(data).digest()).headers["Location"]
    received = received_bytes(master)
    with start_patch(master, location, data, sent=700_000):
        wait_received(master, received, 700_000)
    offset = wait_for(lambda: head_offset(master, location), 10, what="the cut PATCH to be settled")
    assert offset == 700_000
    assert patch(master, location, offset, data[offset:]).status_code == 204
    assert (master.root / "out" / "result.mp4").read_bytes() == data


def test_a_cut_patch_leaves_no_handler_behind(master, job):
    """The handler of a PATCH whose client went away ends then, not at shutdown (where it used to end as a 500)."""
    data = os.urandom(2_000_000)
    location = create(master, len(data)).headers["Location"]
    received = received_bytes(master)
    with start_patch(master, location, data, sent=700_000):
        wait_received(master, received, 700_000)
        assert master.requests_in_progress() == 1
    wait_for(lambda: master.requests_in_progress() == 0, 10, 0.01, "the cut PATCH's handler to end")


def test_a_head_during_a_receiving_patch_answers_once_that_patch_ends(master, job):
    """A client that re-HEADs after its connection was cut learns the offset including what the master
    was still draining from that connection, not the one from before it."""
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(2_000_000)
    location = create(master, len(data)).headers["Location"]
    received = received_bytes(master)
    sock = start_patch(master, location, data, sent=700_000)
    wait_received(master, received, 700_000)
    with ThreadPoolExecutor(1) as pool:
        head = pool.submit(head_offset, master, location)
        wait_for(lambda: master.requests_in_progress() == 2, 10, 0.01, "the HEAD to wait for the PATCH")
        assert not head.done()
        sock.close()
        assert head.result(10) == 700_000


def test_real_tus_client_uploads_a_file(master, job, tmp_path):
    path = tmp_path / "converted.mp4"
    path.write_bytes(os.urandom(1_500_000))
    client = tus_client.TusClient(f"{master.url}/api/uploads")
    uploader = client.uploader(str(path), chunk_size=400_000, upload_checksum=True,
                               metadata={"job_id": job, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    uploader.upload()
    assert (master.root / "out" / "result.mp4").read_bytes() == path.read_bytes()
    assert master.job(job)["status"] == "completed"


def test_upload_for_a_job_not_processing_is_refused(master):
    (master.root / "in").mkdir()
    (master.root / "in" / "a.mp4").write_bytes(b"s")
    master.submit("in/a.mp4", "out/a.mp4", job_id="p1")
    assert create(master, 5, job_id="p1").status_code == 400
    assert not temp_files(master)


class TestWorkerResumableUpload:
    def test_worker_client_uploads_over_tus(self, master, job, tmp_path):
        path = tmp_path / "output.mp4"
        path.write_bytes(os.urandom(3_000_000))
        assert master.client("w1").upload_resumable(job, path) == 3_000_000
        assert (master.root / "out" / "result.mp4").read_bytes() == path.read_bytes()

    def test_cut_upload_resumes_from_the_masters_offset(self, master, job, tmp_path):
        from tests.faults.proxy import Fault, FaultProxy

        data = os.urandom(6_000_000)
        path = tmp_path / "output.mp4"
        path.write_bytes(data)
        proxy = FaultProxy(int(master.url.rsplit(":", 1)[1]))
        # POST and PATCH share the first (keep-alive) connection: cut it 4 MB into the PATCH
        proxy.add(Fault("up", after_bytes=4_000_000))
        client = master.client("w1")
        client.base_url = proxy.url
        assert client.upload_resumable(job, path) == len(data)
        assert (master.root / "out" / "result.mp4").read_bytes() == data
        sent = client.metrics.transfer_bytes.labels("upload")._value.get()
        assert sent < 2 * len(data) - 3_000_000  # resumed: the bytes the master had kept were not sent again
        assert client.metrics.transfer_retries.labels("upload")._value.get() == 1
        proxy.close()


def test_final_patch_digest_is_checked(master, job):
    data = b"final piece carries the digest"
    location = create(master, len(data)).headers["Location"]
    wrong = patch(master, location, 0, data, **{"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "digest_mismatch"
    assert not (master.root / "out" / "result.mp4").exists() and not temp_files(master)
    location = create(master, len(data)).headers["Location"]
    right = patch(master, location, 0, data, **{"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(data).digest())}:"})
    assert right.status_code == 204 and (master.root / "out" / "result.mp4").read_bytes() == data


def test_a_second_patch_while_one_is_receiving_is_409_busy(master, job):
    data = os.urandom(1_000_000)
    location = create(master, len(data)).headers["Location"]
    received = received_bytes(master)
    with start_patch(master, location, data, sent=100_000):
        wait_received(master, received, 100_000)
        second = patch(master, location, 0, data)
        assert second.status_code == 409 and second.json()["error"] == "upload_busy"
    offset = wait_for(lambda: head_offset(master, location), 10, what="the cut PATCH to be settled")
    assert offset == 100_000
    assert patch(master, location, offset, data[offset:]).status_code == 204
    assert (master.root / "out" / "result.mp4").read_bytes() == data
