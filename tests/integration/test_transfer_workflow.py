"""The seed's four integration tests, ported and extended: real master, real worker client, real files."""

import hashlib
import http.server
import os
import socket
import threading

import pytest
import requests

from worker.client import MasterClient
from worker.errors import JobLost, RetryableError
from worker.retry import RetryPolicy

pytestmark = pytest.mark.integration


def sha256(path):
    return hashlib.file_digest(open(path, "rb"), "sha256").hexdigest()


@pytest.fixture
def big_source(master):
    path = master.root / "in" / "big.mkv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))  # 64 MiB: larger than any buffer on either side
    return path


class TestFileTransferWorkflow:
    def test_download_then_upload_round_trip_is_byte_exact(self, master, big_source, tmp_path):
        master.submit("in/big.mkv", "out/big.mkv", job_id="rt")
        assert master.claim("w1")["id"] == "rt"
        client = master.client("w1")
        local = tmp_path / "job_rt" / "source.mkv"
        local.parent.mkdir()
        assert client.download_source_video("rt", local) == big_source.stat().st_size
        assert sha256(local) == sha256(big_source)
        assert master.job("rt")["status"] == "processing"
        assert client.upload_converted_video("rt", local) == big_source.stat().st_size
        assert sha256(master.root / "out" / "big.mkv") == sha256(big_source)
        job = master.job("rt")
        assert (job["status"], job["output_size"], job["source_size"]) == ("completed", 64 << 20, 64 << 20)


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 for the first ``failures`` requests, then the real bytes."""

    failures = 2
    body = b"video-bytes" * 1000
    seen = 0

    def do_GET(self):
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            payload = b'{"error":"unavailable","message":"try later"}'
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def serve(handler_cls):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def lying_server(lies: int, body: bytes):
    """Claims Content-Length len(body) but sends only half of it, for the first ``lies`` connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    state = {"served": 0}

    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                state["served"] += 1
                data = body[: len(body) // 2] if state["served"] <= lies else body
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + data)

    threading.Thread(target=loop, daemon=True).start()
    return sock, state


class TestDownloadRetryLogic:
    def test_backoff_values(self):
        assert [RetryPolicy(3, 2, 2, 60).delay(n) for n in (1, 2, 3)] == [2, 4, 8]

    def test_server_failing_twice_then_succeeding(self, tmp_path):
        _FlakyHandler.seen = 0
        server = serve(_FlakyHandler)
        slept = []
        client = MasterClient(f"http://127.0.0.1:{server.server_address[1]}", "w1",
                              retry=RetryPolicy(3, 2, 2, 60, sleep=slept.append))
        target = tmp_path / "source.mp4"
        assert client.download_source_video("j", target) == len(_FlakyHandler.body)
        assert target.read_bytes() == _FlakyHandler.body
        assert _FlakyHandler.seen == 3 and slept == [2, 4]
        server.shutdown()

    def test_three_failures_give_up_and_leave_no_partial_file(self, tmp_path):
        _FlakyHandler.seen = 0
        _FlakyHandler.failures = 5
        try:
            server = serve(_FlakyHandler)
            client = MasterClient(f"http://127.0.0.1:{server.server_address[1]}", "w1",
                                  retry=RetryPolicy(3, 0.01, 2, 0.1))
            with pytest.raises(RetryableError):
                client.download_source_video("j", tmp_path / "source.mp4")
            assert _FlakyHandler.seen == 3 and not (tmp_path / "source.mp4").exists()
            server.shutdown()
        finally:
            _FlakyHandler.failures = 2

    def test_short_body_is_retried_and_partial_removed(self, tmp_path):
        body = os.urandom(200_000)
        sock, state = lying_server(lies=1, body=body)
        client = MasterClient(f"http://127.0.0.1:{sock.getsockname()[1]}", "w1", retry=RetryPolicy(3, 0.01, 2, 0.1))
        target = tmp_path / "source.mp4"
        assert client.download_source_video("j", target) == len(body)
        assert target.read_bytes() == body and state["served"] == 2
        sock.close()

    def test_always_short_body_fails_and_removes_partial(self, tmp_path):
        sock, state = lying_server(lies=99, body=os.urandom(100_000))
        client = MasterClient(f"http://127.0.0.1:{sock.getsockname()[1]}", "w1", retry=RetryPolicy(3, 0.01, 2, 0.1))
        with pytest.raises(RetryableError):
            client.download_source_video("j", tmp_path / "source.mp4")
        assert state["served"] == 3 and list(tmp_path.iterdir()) == []
        sock.close()

    def test_job_not_processing_is_not_retried(self, master, tmp_path):
        path = master.root / "in" / "a.mp4"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        master.submit("in/a.mp4", "out/a.mp4", job_id="np")
        with pytest.raises(JobLost):
            master.client().download_source_video("np", tmp_path / "s.mp4")
        assert not (tmp_path / "s.mp4").exists()


class TestUploadMultipartForm:
    def test_request_is_streamed_multipart_with_exact_length(self, tmp_path):
        seen = {}

        class Capture(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                seen["type"] = self.headers["Content-Type"]
                seen["length"] = int(self.headers["Content-Length"])
                seen["chunked"] = self.headers.get("Transfer-Encoding")
                seen["body"] = self.rfile.read(seen["length"])
                payload = b'{"size": %d}' % 5000
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        server = serve(Capture)
        path = tmp_path / "output.mp4"
        path.write_bytes(b"v" * 5000)
        client = MasterClient(f"http://127.0.0.1:{server.server_address[1]}", "w1", retry=RetryPolicy(1, 0, 2, 0))
        assert client.upload_converted_video("j", path) == 5000
        assert seen["type"].startswith("multipart/form-data; boundary=") and seen["chunked"] is None
        assert seen["length"] == len(seen["body"]) and b'name="video"; filename="output.mp4"' in seen["body"]
        server.shutdown()

    def test_size_mismatch_reported_by_master_is_an_error(self, master, tmp_path):
        class Liar(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "12")
                self.end_headers()
                self.wfile.write(b'{"size": 1} ')

            def log_message(self, *args):
                pass

        server = serve(Liar)
        path = tmp_path / "o.mp4"
        path.write_bytes(b"abc")
        client = MasterClient(f"http://127.0.0.1:{server.server_address[1]}", "w1", retry=RetryPolicy(2, 0, 2, 0))
        with pytest.raises(RetryableError, match="stored 1 bytes"):
            client.upload_converted_video("j", path)
        server.shutdown()


class TestJobStatusTransitions:
    def test_pending_processing_completed(self, master, tmp_path):
        (master.root / "in").mkdir()
        (master.root / "in" / "a.mp4").write_bytes(b"src")
        master.submit("in/a.mp4", "out/a.mp4", job_id="t1")
        assert master.job("t1")["status"] == "pending"
        master.claim("w1")
        assert master.job("t1")["status"] == "processing"
        out = tmp_path / "o.mp4"
        out.write_bytes(b"done")
        master.client("w1").upload_converted_video("t1", out)
        assert master.job("t1")["status"] == "completed"

    def test_illegal_transitions_are_refused(self, master):
        (master.root / "in").mkdir()
        (master.root / "in" / "a.mp4").write_bytes(b"src")
        master.submit("in/a.mp4", "out/a.mp4", job_id="t2")
        # pending -> completed (upload) and pending -> pending (retry) are not allowed
        assert requests.post(f"{master.url}/api/worker/upload-video?job_id=t2", files={"video": b"x"},
                             timeout=5).status_code == 400
        assert requests.post(f"{master.url}/api/jobs/t2/retry", timeout=5).status_code == 409
        requests.post(f"{master.url}/api/jobs/t2/cancel", timeout=5)
        # cancelled -> processing (claim) is not allowed either
        assert master.claim("w1") is None
        assert master.job("t2")["status"] == "cancelled"
