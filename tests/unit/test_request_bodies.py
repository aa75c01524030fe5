import hashlib
import threading

import pytest
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import ValueTarget

from converter_client.errors import Cancelled
from converter_client.request_bodies import FileRangeBody, MultipartFileBody
from converter_client.tus import TusUpload


def read_all(body, block=1000):
    out = bytearray()
    while chunk := body.read(block):
        out += chunk
    return bytes(out)


def test_body_parses_back_to_the_file_and_length_is_exact(tmp_path):
    payload = bytes(range(256)) * 4000
    path = tmp_path / "out.mp4"
    path.write_bytes(payload)
    body = MultipartFileBody(path, "video", "out.mp4", "video/mp4")
    raw = read_all(body, 4096)
    assert len(raw) == len(body)
    target = ValueTarget()
    parser = StreamingFormDataParser(headers={"Content-Type": body.content_type})
    parser.register("video", target)
    parser.data_received(raw)
    assert target.value == payload and target.multipart_filename == "out.mp4"


def test_file_is_read_in_blocks_of_the_requested_size(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    sizes = []
    body = MultipartFileBody(path, "video", "f", on_read=sizes.append)
    read_all(body, 1 << 20)
    assert sizes == [1 << 20] * 3


def test_cancel_stops_the_body(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    cancel = threading.Event()
    body = MultipartFileBody(path, "video", "f", cancel=cancel)
    body.read(5)
    cancel.set()
    with pytest.raises(Cancelled):
        body.read(5)


def test_range_body_hashes_exactly_the_bytes_it_sent(tmp_path):
    payload = bytes(range(256)) * 20_000
    path = tmp_path / "f"
    path.write_bytes(payload)
    hasher = hashlib.sha256()
    body = FileRangeBody(path, 1000, 3_000_000, hasher=hasher)
    sent = read_all(body, 1 << 20)
    body.close()  # waits for the helper thread's last update
    assert sent == payload[1000:3_001_000]
    assert hasher.digest() == hashlib.sha256(sent).digest()


def test_tus_hash_continues_from_what_it_covered_and_restarts_below_it(tmp_path):
    payload = bytes(range(256)) * 10_000
    path = tmp_path / "f"
    path.write_bytes(payload)
    upload = TusUpload(path, len(payload))
    upload.hash_up_to(700_000)
    covered = upload.hasher
    upload.hash_up_to(2_000_000)  # the master holds more now: only the difference is read
    assert upload.hasher is covered and upload.hasher.digest() == hashlib.sha256(payload[:2_000_000]).digest()
    upload.hash_up_to(5)  # the master holds less than before: start over
    assert upload.hashed == 5 and upload.hasher.digest() == hashlib.sha256(payload[:5]).digest()
