import threading

import pytest
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import ValueTarget

from worker.errors import Shutdown
from worker.bodies import MultipartFileBody


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
    with pytest.raises(Shutdown):
        body.read(5)
