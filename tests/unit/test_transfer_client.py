"""converter_client, the client side shared by the worker and converterctl: one tus client, one set of
protocol names, and each side's reading of the same failure."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import requests

from converter_client.download import UnexpectedRange
from converter_client.errors import (Cancelled, DigestMismatch, MasterAway, Refused, TransferCut, UploadConflict,
                                     UploadDropped)
from converter_client.tus import TUS_TAIL, TusClient, TusUpload, encode_metadata
from converter_common import protocol
from converter_common.digest import parse_repr_digest
from converterctl.client import cli_errors
from converterctl.errors import ApiError, Failed, Unreachable
from worker.client import worker_errors
from worker.errors import ApiRejected, JobLost, MasterUnreachable, RetryableError, Shutdown

REPO = Path(__file__).resolve().parents[2]


def answer(status: int, body: object = b"", headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if isinstance(body, dict) else body
    response.headers.update(headers or {})
    return response


class FakeMaster:
    """``MasterHttp.send`` for a tus upload: records each request, answers from ``answers`` or with the new offset."""

    def __init__(self, *answers: requests.Response):
        self.answers = list(answers)
        self.requests: list[tuple[str, str, dict, bytes]] = []

    def send(self, method, path, *, read_timeout=None, data=None, headers=None, **kwargs):
        body = b""
        if data is not None:
            body = data if isinstance(data, bytes) else b"".join(iter(lambda: data.read(1 << 16), b""))
        self.requests.append((method, path, dict(headers or {}), body))
        if self.answers:
            return self.answers.pop(0)
        if method == "PATCH":
            return answer(204, headers={"Upload-Offset": str(int(headers["Upload-Offset"]) + len(body))})
        return answer(201, headers={"Location": "/api/uploads/u1"})


def test_a_file_with_its_digest_in_the_metadata_goes_in_one_patch(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    master = FakeMaster()
    upload = TusUpload(path, 5000, hashlib.sha256(b"x" * 5000).digest(), "/api/uploads/u1")
    read = []
    TusClient(master).send(upload, 1000, what="upload", on_read=read.append)
    [(method, location, headers, body)] = master.requests
    assert (method, location, headers["Upload-Offset"], body) == ("PATCH", "/api/uploads/u1", "1000", b"x" * 4000)
    assert headers["Tus-Resumable"] == protocol.TUS_VERSION and "Repr-Digest" not in headers
    assert sum(read) == 4000


def test_without_a_digest_the_tail_goes_last_with_the_whole_files_digest(tmp_path):
    data = bytes(range(256)) * ((TUS_TAIL + 3000) // 256 + 1)
    path = tmp_path / "f"
    path.write_bytes(data)
    master = FakeMaster()
    upload = TusUpload(path, len(data))
    assert TusClient(master).resume_or_create(upload, {"job_id": "j1", "filename": "f", "sha256": None}) == 0
    TusClient(master).send(upload, 0, what="upload")
    create, first, tail = master.requests
    assert create[2]["Upload-Metadata"] == encode_metadata({"job_id": "j1", "filename": "f"})
    assert first[3] + tail[3] == data and len(tail[3]) == TUS_TAIL
    assert "Repr-Digest" not in first[2]
    assert parse_repr_digest(tail[2]["Repr-Digest"]) == hashlib.sha256(data).digest()
    assert upload.hashed == len(data) - TUS_TAIL


def test_a_409_to_resume_from_and_a_dropped_upload_are_told_apart(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"y" * 10)
    upload = TusUpload(path, 10, hashlib.sha256(b"y" * 10).digest(), "/api/uploads/u1")
    busy = FakeMaster(answer(409, {"error": protocol.UPLOAD_BUSY, "message": "m"}))
    with pytest.raises(UploadConflict, match="asking it for the offset again"):
        TusClient(busy).send(upload, 0, what="upload of job j")
    assert upload.location == "/api/uploads/u1"
    dropped = FakeMaster(answer(400, {"error": protocol.DIGEST_MISMATCH, "message": "m"}))
    with pytest.raises(UploadDropped, match="another SHA-256"):
        TusClient(dropped).send(upload, 0, what="upload of job j")
    assert upload.location is None  # the next attempt creates a new upload
    short = FakeMaster(answer(204, headers={"Upload-Offset": "4"}))
    upload.location = "/api/uploads/u2"
    with pytest.raises(TransferCut, match="holds 4 of 10"):
        TusClient(short).send(upload, 0, what="upload")


def test_a_gone_upload_is_none_and_a_resumed_one_gives_the_masters_offset(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"z" * 10)
    tus = TusClient(FakeMaster(answer(410), answer(200, headers={"Upload-Offset": "7"})))
    assert tus.state("/api/uploads/u1") is None
    assert tus.state("/api/uploads/u1").offset == 7


@pytest.mark.parametrize("raised, worker_error", [
    (Cancelled("upload cancelled"), Shutdown),
    (MasterAway("no answer"), MasterUnreachable),
    (TransferCut("short"), RetryableError),
    (DigestMismatch("mismatch"), RetryableError),
    (UploadConflict(answer(409, {"error": protocol.OFFSET_MISMATCH, "message": "m"})), RetryableError),
    (Refused(answer(409, {"error": protocol.NOT_LEASE_OWNER, "message": "m"})), JobLost),
    (Refused(answer(400, {"error": "invalid_field", "message": "m"})), ApiRejected),
    (Refused(answer(503, b"busy")), MasterUnreachable),
])
def test_the_worker_reads_each_failure_as_its_own_error(raised, worker_error):
    with pytest.raises(worker_error):
        with worker_errors():
            raise raised


@pytest.mark.parametrize("raised, cli_error", [
    (MasterAway("cannot reach the master"), Unreachable),
    (TransferCut("cut"), Unreachable),
    (UnexpectedRange("master resumed the download at another offset", "bytes 5-9/10"), Failed),
    (UploadConflict(answer(409, {"error": protocol.UPLOAD_BUSY, "message": "m"})), ApiError),
    (Refused(answer(404, {"error": protocol.JOB_NOT_FOUND, "message": "no job"})), ApiError),
])
def test_converterctl_reads_each_failure_as_its_exit_status(raised, cli_error):
    with pytest.raises(cli_error) as caught:
        with cli_errors():
            raise raised
    if isinstance(caught.value, ApiError):
        assert caught.value.code == raised.code and caught.value.status == raised.status


CLIENT_SIDE = ["worker/client.py", "worker/storage_modes.py", "converterctl/transfer.py", "converterctl/client.py",
               *(str(p.relative_to(REPO)) for p in (REPO / "converter_client").glob("*.py"))]


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_protocol_names_are_spelled_only_in_the_protocol_module(module):
    source = (REPO / module).read_text()
    for literal in (r'"/api/', r'"1\.0\.0"', r'"video"', r'"Tus-Resumable"', r'"X-Worker-Id"', r'"offset_mismatch"',
                    r'"upload_busy"', r'"digest_mismatch"', r'"not_lease_owner"', r'"job_not_found"'):
        assert not re.search(literal, source), f"{module} spells {literal}; use converter_common.protocol"


def test_there_is_one_tus_client():
    """Only ``converter_client.tus`` sends tus PATCHes (a JSON PATCH, such as a job's new priority, is not one)."""
    users = [p for p in [*(REPO / "worker").glob("*.py"), *(REPO / "converterctl").glob("*.py")]
             if re.search(r'"Upload-Offset"|TUS_CONTENT_TYPE', p.read_text())]
    assert users == []


def test_the_shared_client_needs_only_what_the_cli_extra_installs():
    import subprocess
    import sys
    code = ("import sys, pkgutil, importlib, converter_client\n"
            "for m in pkgutil.iter_modules(converter_client.__path__): importlib.import_module('converter_client.' + m.name)\n"
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    assert not loaded & {"tornado", "tenacity", "prometheus_client", "yaml", "worker", "converterctl", "master"}
