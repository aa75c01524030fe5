"""A profile's skip and keep-smaller rules with a real master, real workers and FFmpeg: a source already in the
target codec ends skipped with only its head transferred (the download's first 2 MiB, which ffprobe reads), a
source that does not match is converted with its bytes transferred exactly once, on both storage backends and both
databases; an output larger than its source is discarded, the source's bytes kept as the output (on both backends),
never over an existing file."""

import hashlib
import subprocess

import pytest
import requests

from tests.faults.proxy import Fault, FaultProxy
from tests.fixtures import Cluster, wait_for
from worker.client import MasterClient
from worker.errors import ApiRejected
from worker.retry import RetryPolicy
from worker.storage_modes import SOURCE_HEAD_BYTES

pytestmark = pytest.mark.integration


def metric(url: str, name: str, labels: str = "") -> float:
    lines = [line for line in requests.get(url, timeout=10).text.splitlines()
             if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(name + " "))]
    return float(lines[0].split()[1]) if lines else 0.0


@pytest.fixture(scope="module")
def matching_source(tmp_path_factory):
    """H.264 720p25, ~1.8 Mbit/s (0.08 bits per pixel per frame: within h264-720p's 0.1 x 1.2), over 3 MB, index at
    the front (faststart): noise keeps the encoder at its bitrate."""
    path = tmp_path_factory.mktemp("skip") / "already.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-vf", "noise=alls=30:allf=t", "-t", "15", "-c:v", "libx264", "-preset", "ultrafast",
                    "-b:v", "1800k", "-maxrate", "1800k", "-bufsize", "1800k", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, timeout=120)
    assert path.stat().st_size > 1.5 * SOURCE_HEAD_BYTES
    return path


@pytest.fixture(scope="module")
def matching_source_indexed_at_the_end(matching_source):
    """The same stream, its MP4 index (moov) at the end: the head does not tell."""
    path = matching_source.with_name("indexed-at-end.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(matching_source), "-c", "copy", str(path)], check=True,
                   timeout=60)
    return path


@pytest.fixture(scope="module")
def dense_source(tmp_path_factory):
    """H.264 720p25 at a constant 8 Mbit/s (0.35 bits per pixel per frame: above h264-720p's 0.12), 3 s, over
    2 MiB, index at the front: the head tells, and says convert; the conversion comes out smaller."""
    path = tmp_path_factory.mktemp("dense") / "dense.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-t", "3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M", "-minrate", "8M", "-maxrate", "8M",
                    "-bufsize", "2M", "-x264-params", "nal-hrd=cbr:force-cfr=1", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, timeout=120)
    assert path.stat().st_size > 1.2 * SOURCE_HEAD_BYTES
    return path


class Backend:
    """A cluster and what its source transfers cost: the master's served bytes (local files) or, with a bucket,
    the bytes SeaweedFS sent through a proxy the master's S3 endpoint points at (presigned URLs go through it)."""

    def __init__(self, cluster: Cluster, store_proxy: FaultProxy | None):
        self.cluster, self.store_proxy = cluster, store_proxy

    def served(self) -> float:
        return metric(f"{self.cluster.url}/metrics", "converter_master_bytes_served_total")

    def store_sent(self) -> int:
        return self.store_proxy.traffic["down"] if self.store_proxy is not None else 0


@pytest.fixture(params=["local-sqlite", "s3-sqlite", "local-postgres"])
def any_cluster(request, tmp_path):
    storage, database = request.param.split("-")
    bucket = request.getfixturevalue("seaweedfs") if storage == "s3" else None
    proxy = FaultProxy(bucket.port) if bucket else None
    db = {"url": request.getfixturevalue("postgres").new_database()} if database == "postgres" else None
    running = Cluster(tmp_path, bucket=bucket, database=db, s3={"endpoint": proxy.url} if proxy else None)
    yield Backend(running, proxy)
    running.stop()
    if proxy is not None:
        proxy.close()


# What a bucket's answers add to the bytes of a source sent through the proxy: headers and the master's small
# requests (HEAD, listing); far less than the source's bytes after the head.
STORE_OVERHEAD = 64 * 1024


def put(backend: Backend, relative: str, source) -> None:
    """The source in the master's storage; in a bucket with its SHA-256 in its metadata, so the master does not
    read it (what the store sends is then the worker's download)."""
    backend.cluster.put_source(relative, source, with_digest=True)


def downloaded(worker) -> float:
    return metric(worker.metrics_url, "converter_worker_transfer_bytes_total", '{direction="download"}')


def test_a_source_already_in_the_target_codec_is_skipped_with_only_its_head_transferred(any_cluster,
                                                                                         matching_source):
    backend, cluster = any_cluster, any_cluster.cluster
    put(backend, "in/already.mp4", matching_source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/already.mp4", "out/already.mp4", "skip1", profile="h264-720p")
    job = cluster.wait_status("skip1", "skipped", "completed", "failed", timeout=90)
    assert job["status"] == "skipped", (job, worker.output())
    assert "already h264 1280x720" in job["reason"] and "h264-720p's skip rule" in job["reason"]
    assert (job["kept_source"], job["output_size"], job["output_sha256"]) == (False, None, None)
    assert cluster.stored("out/already.mp4") is None
    # the download's first 2 MiB went, and no more: from the master (local files) or the store (a bucket)
    size = matching_source.stat().st_size
    if backend.store_proxy is None:
        assert backend.served() == SOURCE_HEAD_BYTES < size
    else:
        assert backend.served() == 0 and SOURCE_HEAD_BYTES <= backend.store_sent() < SOURCE_HEAD_BYTES + STORE_OVERHEAD
    wait_for(lambda: metric(worker.metrics_url, "converter_worker_jobs_finished_total", '{outcome="skipped"}') == 1,
             what="the worker to count the skipped job")
    assert downloaded(worker) == SOURCE_HEAD_BYTES  # counted once, as the download's bytes
    assert metric(worker.metrics_url, "converter_worker_transfer_retries_total", '{direction="download"}') == 0
    assert "stopped after the first 2097152 bytes" in worker.output()
    assert metric(f"{cluster.url}/metrics", "converter_master_jobs", '{status="skipped"}') == 1
    attempts = requests.get(f"{cluster.url}/api/jobs/skip1/attempts", timeout=10).json()["attempts"]
    assert [a["outcome"] for a in attempts] == ["skipped"]
    listed = requests.get(f"{cluster.url}/api/jobs", params={"status": "skipped"}, timeout=10).json()
    assert [j["id"] for j in listed["jobs"]] == ["skip1"]
    assert not list((cluster.tmp / "cache-w1").glob("job_*"))  # the head went with the job's directory


def test_a_source_that_does_not_match_is_converted_with_its_bytes_transferred_once(any_cluster, dense_source):
    backend, cluster = any_cluster, any_cluster.cluster
    put(backend, "in/dense.mp4", dense_source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/dense.mp4", "out/dense.mp4", "conv1", profile="h264-720p")
    job = cluster.wait_status("conv1", "completed", "skipped", "failed", timeout=90)
    assert job["status"] == "completed" and not job["kept_source"], (job, worker.output())
    stored = cluster.stored("out/dense.mp4")
    assert stored is not None and hashlib.sha256(stored).hexdigest() == job["output_sha256"]
    # the head (judged: convert) then the rest from where it stopped: the source's bytes once, in two GETs
    size = dense_source.stat().st_size
    if backend.store_proxy is None:
        assert backend.served() == size
    else:
        assert backend.served() == 0 and size <= backend.store_sent() < size + STORE_OVERHEAD
    wait_for(lambda: metric(worker.metrics_url, "converter_worker_jobs_finished_total", '{outcome="completed"}')
             == 1, what="the worker to count the job")
    assert downloaded(worker) == size
    assert metric(worker.metrics_url, "converter_worker_transfer_retries_total", '{direction="download"}') == 0
    assert "stopped after" not in worker.output()


def faulty_worker(backend: Backend, *faults: Fault):
    """A worker whose source download goes through a fault proxy: in front of the master (local files) or of the
    store (a bucket: the presigned URLs name the proxy); ``faults`` are added to it."""
    cluster = backend.cluster
    proxy = backend.store_proxy or FaultProxy(cluster.port)
    for fault in faults:
        proxy.add(fault)
    worker = cluster.add_worker("w1", master_url=None if backend.store_proxy else proxy.url,
                                retry={"attempts": 5, "base_delay": 0.05, "factor": 2, "cap": 0.5})
    return worker, proxy


def retries(worker) -> float:
    return metric(worker.metrics_url, "converter_worker_transfer_retries_total", '{direction="download"}')


def test_a_cut_inside_the_head_is_resumed_by_the_download_and_the_job_still_skipped(any_cluster, matching_source):
    """The head is the download's first part: a cut in it is the download's retry, resumed from the bytes on disk,
    and only the head's bytes are counted, once."""
    backend, cluster = any_cluster, any_cluster.cluster
    put(backend, "in/already.mp4", matching_source)
    cluster.submit("in/already.mp4", "out/already.mp4", "cut1", profile="h264-720p")
    worker, proxy = faulty_worker(backend, Fault("down", after_bytes=1_000_000))
    try:
        job = cluster.wait_status("cut1", "skipped", "completed", "failed", timeout=90)
        assert job["status"] == "skipped", (job, worker.output())
        assert proxy.injected == 1 and "cut at byte" in worker.output()
        wait_for(lambda: retries(worker) == 1, what="the worker to count the download's retry")
        assert downloaded(worker) == SOURCE_HEAD_BYTES
        assert metric(worker.metrics_url, "converter_worker_transfer_failures_total", '{direction="download"}') == 0
    finally:
        if proxy is not backend.store_proxy:
            proxy.close()


def test_cuts_in_the_head_and_in_the_rest_are_resumed_and_every_byte_counted_once(any_cluster, dense_source):
    backend, cluster = any_cluster, any_cluster.cluster
    put(backend, "in/dense.mp4", dense_source)
    cluster.submit("in/dense.mp4", "out/dense.mp4", "cut2", profile="h264-720p")
    worker, proxy = faulty_worker(backend, Fault("down", after_bytes=1_000_000),
                                  Fault("down", after_bytes=SOURCE_HEAD_BYTES + 300_000))
    try:
        job = cluster.wait_status("cut2", "completed", "skipped", "failed", timeout=90)
        assert job["status"] == "completed" and not job["kept_source"], (job, worker.output())
        stored = cluster.stored("out/dense.mp4")
        assert stored is not None and hashlib.sha256(stored).hexdigest() == job["output_sha256"]
        assert proxy.injected == 2 and job["attempts"] == 1
        wait_for(lambda: retries(worker) == 2, what="the worker to count the download's two retries")
        assert downloaded(worker) == dense_source.stat().st_size  # resumed from the bytes on disk, never re-counted
    finally:
        if proxy is not backend.store_proxy:
            proxy.close()


def test_a_matching_source_whose_head_does_not_tell_is_judged_on_the_whole_download(
        any_cluster, matching_source_indexed_at_the_end):
    """An MP4 with its index at the end: ffprobe cannot read its first 2 MiB, so the download goes on and the
    rule is judged on the whole source (skipped all the same, its bytes transferred once)."""
    backend, cluster = any_cluster, any_cluster.cluster
    source = matching_source_indexed_at_the_end
    put(backend, "in/late.mp4", source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/late.mp4", "out/late.mp4", "late1", profile="h264-720p")
    job = cluster.wait_status("late1", "skipped", "completed", "failed", timeout=90)
    assert job["status"] == "skipped", (job, worker.output())
    wait_for(lambda: metric(worker.metrics_url, "converter_worker_jobs_finished_total", '{outcome="skipped"}') == 1,
             what="the worker to count the skipped job")
    assert downloaded(worker) == source.stat().st_size
    assert backend.served() in (0, source.stat().st_size)  # 0: a bucket served it


def outputs_left(cluster: Cluster) -> list[str]:
    """What lies under out/ in the master's storage (a temp file, an orphan object would show), and no multipart
    upload left open in a bucket."""
    if cluster.bucket is not None:
        wait_for(lambda: cluster.bucket.open_uploads() == [], 20, 0.2, "no multipart upload left open")
        return [key[len("out/"):] for key in cluster.bucket.keys() if key.startswith("out/")]
    return sorted(p.name for p in (cluster.root / "out").iterdir())


def test_an_output_larger_than_its_source_is_discarded_and_the_source_kept(any_cluster, tmp_path):
    """Local files: the master copies the source to the output path. A bucket: the worker sends the copy it
    downloaded, the way an output goes, and the master checks it is the source's bytes."""
    cluster = any_cluster.cluster
    # HEVC (not the target codec: no skip) 720p at CRF 51: tiny; h264-720p (720 lines: no upscale) at CRF 23 is not
    source = tmp_path / "tiny.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=10", "-t", "2",
                    "-c:v", "libx265", "-preset", "ultrafast", "-crf", "51", "-x265-params", "log-level=error",
                    "-pix_fmt", "yuv420p", str(source)], check=True, timeout=60)
    put(any_cluster, "in/tiny.mkv", source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/tiny.mkv", "out/tiny.mp4", "big1", profile="h264-720p")
    job = cluster.wait_status("big1", "completed", "failed", "skipped", timeout=90)
    assert job["status"] == "completed", (job, worker.output())
    assert job["kept_source"] is True and "larger than the source" in job["reason"]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert cluster.stored("out/tiny.mp4") == source.read_bytes()
    assert (job["output_sha256"], job["output_size"], job["saved_bytes"]) == (digest, source.stat().st_size, 0)
    assert cluster.stored("in/tiny.mkv") == source.read_bytes()  # the source untouched
    assert outputs_left(cluster) == ["tiny.mp4"]  # no temp file, no other object, no open upload
    assert "source kept" in worker.output()
    upload = metric(worker.metrics_url, "converter_worker_transfer_bytes_total", '{direction="upload"}')
    assert upload == (source.stat().st_size if cluster.bucket is not None else 0)  # the larger output never went


def test_an_upscaled_output_larger_than_its_source_is_discarded_too(cluster, tmp_path):
    """discard_larger holds for an upscale as well (h264-720p makes a 160x90 source 720 lines tall): a profile that
    upscales on purpose sets discard_larger false."""
    source = tmp_path / "small.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5", "-t", "1",
                    "-c:v", "mpeg4", str(source)], check=True, timeout=60)
    cluster.put_source("in/small.mkv", source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/small.mkv", "out/small.mp4", "up1", profile="h264-720p")
    job = cluster.wait_status("up1", "completed", "failed", "skipped", timeout=90)
    assert job["status"] == "completed" and job["kept_source"] is True, (job, worker.output())
    assert cluster.stored("out/small.mp4") == source.read_bytes()


def test_a_kept_source_in_a_bucket_never_overwrites_and_must_be_the_sources_bytes(tmp_path, seaweedfs):
    """The worker's side of keeping the source with a bucket, step by step: bytes that are not the source's are
    refused before any upload starts; an object already at the output path stays, the job fails, nothing is left."""
    cluster = Cluster(tmp_path, bucket=seaweedfs)
    try:
        source = tmp_path / "s.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5", "-t", "1",
                        "-c:v", "mpeg4", str(source)], check=True, timeout=60)
        cluster.put_source("in/s.mkv", source)
        cluster.submit("in/s.mkv", "out/s.mp4", "k1", profile="h264-1080p")
        client = MasterClient(cluster.url, "t1", retry=RetryPolicy(attempts=1, base_delay=0.01))
        job = client.claim(5)
        assert job["id"] == "k1"
        other = tmp_path / "not-the-source.mp4"
        other.write_bytes(b"a converted output, larger" * 100)
        with pytest.raises(ApiRejected) as refused:
            client.upload_to_bucket("k1", other, job["bucket"]["part_size"], kept_source="larger")
        assert refused.value.code == "invalid_field" and "is not the source" in str(refused.value)
        assert cluster.bucket.open_uploads() == [] and cluster.job("k1")["status"] == "processing"
        cluster.bucket.put("out/s.mp4", b"someone else's file")
        with pytest.raises(ApiRejected) as exists:
            client.upload_to_bucket("k1", source, job["bucket"]["part_size"], kept_source="larger")
        assert exists.value.code == "output_exists", exists.value
        assert cluster.stored("out/s.mp4") == b"someone else's file"
        assert cluster.job("k1")["status"] == "failed"
        assert outputs_left(cluster) == ["s.mp4"]
    finally:
        cluster.stop()


def test_keep_source_never_overwrites_and_refuses_other_workers(cluster, tmp_path):
    source = tmp_path / "s.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5", "-t", "1",
                    "-c:v", "mpeg4", str(source)], check=True, timeout=60)
    cluster.put_source("in/s.mkv", source)
    cluster.submit("in/s.mkv", "out/s.mp4", "k1", profile="h264-1080p")
    claimed = requests.post(f"{cluster.url}/api/worker/claim", json={"worker_id": "t1", "wait": 5}, timeout=10).json()
    assert claimed["id"] == "k1"
    keep = f"{cluster.url}/api/worker/keep-source"
    other = requests.post(keep, params={"job_id": "k1"}, json={"worker_id": "t2", "reason": "x"}, timeout=10)
    assert (other.status_code, other.json()["error"]) == (409, "not_lease_owner")
    (cluster.root / "out").mkdir(exist_ok=True)
    (cluster.root / "out/s.mp4").write_bytes(b"someone else's file")
    answer = requests.post(keep, params={"job_id": "k1"}, json={"worker_id": "t1", "reason": "larger"}, timeout=10)
    assert answer.status_code == 409 and answer.json()["error"] == "output_exists", answer.text
    assert (cluster.root / "out/s.mp4").read_bytes() == b"someone else's file"
    assert cluster.job("k1")["status"] == "failed"
    assert sorted(p.name for p in (cluster.root / "out").iterdir()) == ["s.mp4"]
