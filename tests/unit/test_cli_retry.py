"""converterctl's backoff: short first waits, a window long enough for a master to restart."""

import pytest

from converterctl.client import Client
from converterctl.errors import Unreachable
from converterctl.retry import UPLOAD_RETRY, RetryPolicy
from converterctl.transfer import SourceRequest, upload_source
from converterctl.upload_state import UploadStateFile
from tests.fixtures import free_port


def test_waits_double_up_to_the_cap():
    policy = RetryPolicy(attempts=6, base_delay=0.5, factor=2.0, cap=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.window == 9.5
    assert not policy.exhausted(5) and policy.exhausted(6)


def test_uploads_ride_out_a_master_restart_of_a_minute():
    assert UPLOAD_RETRY.delay(1) <= 1.0  # a blip costs well under a second
    assert UPLOAD_RETRY.window >= 60.0
    assert UPLOAD_RETRY.cap <= 10.0  # once it is back, the master is found again within seconds


def test_an_absent_master_is_tried_with_backoff_then_given_up(tmp_path):
    source = tmp_path / "s.mkv"
    source.write_bytes(b"x" * 100)
    slept, notes = [], []
    policy = RetryPolicy(attempts=4, base_delay=0.5, sleep=slept.append)
    state = UploadStateFile(tmp_path / "uploads.json", warn=notes.append)
    with pytest.raises(Unreachable, match="Connection refused"):
        upload_source(Client(f"http://127.0.0.1:{free_port()}"), source, SourceRequest("h264-720p"), state,
                      retry=policy, show_progress=False, notify=notes.append)
    assert slept == [0.5, 1.0, 2.0]
    assert [note.split("; ")[1] for note in notes] == [
        "retrying in 0.5 s (try 2 of 4)", "retrying in 1 s (try 3 of 4)", "retrying in 2 s (try 4 of 4)"]
