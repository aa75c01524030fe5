"""Stateful hostile input: a job is created, claimed, then bombarded; it stays processing and unchanged.

Two chains:

* hand-written: submit → claim → every hostile upload of the catalogue (multipart, tus, oversized,
  unauthenticated) at the processing job → the job is exactly as it was, nothing is left on disk,
  and then the lease holder's heartbeat and a good upload still work (no slot, marker or lock leaked);
* schemathesis' stateful testing (OpenAPI links): the served description, with links added here
  (submit → claim → upload / heartbeat / download / tus create) and the submit constrained to a
  source that exists, run as bounded hypothesis state machines (every route, then only a job's way from
  submit to upload until a claimed job's id reached an upload); no step may get a 5xx or an answer the
  description does not allow.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os

import pytest
import requests

from master.auth import Tokens
from tests.hostile.conftest import ADMIN, SOURCE, WORKER, claim, submit
from tests.hostile.support import (MiB, PROMPT, check_refusal, check_unchanged, chunked, exchange, multipart,
                                   repeated, request_head, snapshot)
from tests.hostile.test_multipart import KINDS, body_and_type

pytestmark = pytest.mark.integration

GiB = 1 << 30


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def hostile_uploads(url: str, job_id: str, token: str | None):
    """(name, thunk → Answer, expected statuses) for every hostile upload to ``job_id``."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    upload = f"/api/worker/upload-video?job_id={job_id}"

    def post_multipart(kind):
        body, content_type = body_and_type(kind, [])
        headers = {**auth, "Content-Length": str(len(body)), **({"Content-Type": content_type} if content_type else {})}
        return lambda: exchange(url, request_head("POST", upload, headers), [body])

    cases = [(f"multipart-{kind}", post_multipart(kind), (400,)) for kind in KINDS]
    cases += [
        ("upload-declared-past-limit", lambda: exchange(url, request_head("POST", upload, {
            **auth, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(1 << 62)}),
            [b"--b\r\n"], timeout=PROMPT), (413,)),
        ("upload-wrong-worker", lambda: exchange(url, request_head("POST", upload, {
            **auth, "X-Worker-Id": "intruder", "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": "100"}), [b"x" * 100]), (409,)),
        ("upload-bad-repr-digest", lambda: exchange(url, request_head("POST", upload, {
            **auth, "Repr-Digest": "sha-256=:nope:", "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": "100"}), [b"x" * 100]), (400,)),
        ("upload-wrong-repr-digest", (lambda body_type: lambda: exchange(url, request_head("POST", upload, {
            **auth, "Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:",
            "Content-Type": body_type[1], "Content-Length": str(len(body_type[0]))}), [body_type[0]]))(
            multipart([("video", "a.mp4", b"converted" * 1000)])), (400,)),
        ("heartbeat-2MiB", lambda: exchange(url, request_head("POST", f"/api/worker/heartbeat?job_id={job_id}", {
            **auth, "Content-Type": "application/json", "Content-Length": str(2 * MiB)}),
            repeated(2 * MiB, b" " * 65536)), (413,)),
        ("heartbeat-chunked-2MiB", lambda: exchange(url, request_head("POST", f"/api/worker/heartbeat?job_id={job_id}",
                                                                        {**auth, "Transfer-Encoding": "chunked"}),
                                                     chunked(b" " * (2 * MiB))), (413,)),
        ("tus-create-bad-length", lambda: exchange(url, request_head("POST", "/api/uploads", {
            **auth, "Tus-Resumable": "1.0.0", "Upload-Length": "-5", "Content-Length": "0",
            "Upload-Metadata": f"job_id {b64(job_id.encode())}"})), (400,)),
        ("tus-create-bad-metadata", lambda: exchange(url, request_head("POST", "/api/uploads", {
            **auth, "Tus-Resumable": "1.0.0", "Upload-Length": "5", "Content-Length": "0",
            "Upload-Metadata": "job_id %%%"})), (400,)),
        ("tus-create-too-large", lambda: exchange(url, request_head("POST", "/api/uploads", {
            **auth, "Tus-Resumable": "1.0.0", "Upload-Length": str(2 ** 62), "Content-Length": "0",
            "Upload-Metadata": f"job_id {b64(job_id.encode())}"})), (413,)),
        ("tus-create-wrong-version", lambda: exchange(url, request_head("POST", "/api/uploads", {
            **auth, "Tus-Resumable": "9", "Upload-Length": "5", "Content-Length": "0",
            "Upload-Metadata": f"job_id {b64(job_id.encode())}"})), (412,)),
    ]
    if token:  # the same uploads without a token
        cases += [
            ("unauthenticated-upload-1GiB", lambda: exchange(url, request_head("POST", upload, {
                "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(GiB)}), [b"x" * 100],
                timeout=PROMPT), (401,)),
            ("unauthenticated-upload-chunked", lambda: exchange(url, request_head("POST", upload, {
                "Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"}),
                [b"64\r\n" + b"x" * 100 + b"\r\n"], timeout=PROMPT), (401,)),
            ("unauthenticated-tus-create", lambda: exchange(url, request_head("POST", "/api/uploads", {
                "Tus-Resumable": "1.0.0", "Upload-Length": "5", "Content-Length": "0",
                "Upload-Metadata": f"job_id {b64(job_id.encode())}"})), (401,)),
            ("unauthenticated-heartbeat", lambda: exchange(url, request_head("POST",
                                                                              f"/api/worker/heartbeat?job_id={job_id}", {
                "Content-Type": "application/json", "Content-Length": str(GiB)}), [b"{" * 100], timeout=PROMPT),
                (401,)),
        ]
    return cases


@pytest.fixture(params=["anonymous", "tokens"])
def chain(request, tmp_path):
    tokens = Tokens(admin=ADMIN, worker=WORKER) if request.param == "tokens" else Tokens()
    # two upload slots: a refused upload that kept its slot would soon starve the good one at the end
    from tests.hostile.conftest import _start

    running = _start(tmp_path, tokens, max_concurrent_uploads=2)
    admin, worker = (ADMIN, WORKER) if request.param == "tokens" else (None, None)
    submit(running, "chain1", token=admin)
    assert claim(running, "w1", token=worker)["id"] == "chain1"
    yield running, admin, worker
    running.stop()


def test_create_claim_then_hostile_uploads_leave_the_job_processing(chain):
    """Every hostile upload in turn at the processing job. A case that changes the job is reported, and a fresh
    job is created and claimed for the next case, so one failure does not hide the others."""
    master, admin, worker = chain
    job_id, generation = "chain1", 1
    before = snapshot(master, admin)
    failed = {}
    for name, _, statuses in hostile_uploads(master.url, "chain1", worker):
        send = {n: thunk for n, thunk, _ in hostile_uploads(master.url, job_id, worker)}[name]
        try:
            check_refusal(send(), statuses)
            check_unchanged(master, before, admin, settle=True)
        except AssertionError as exc:
            failed[name] = str(exc).splitlines()[0][:300]
            generation += 1
            job_id = f"chain{generation}"
            submit(master, job_id, output=f"out/deep/result-{generation}.mp4", token=admin)
            assert claim(master, "w1", token=worker)["id"] == job_id
            before = snapshot(master, admin)
    assert not failed, "\n".join(f"{name}: {why}" for name, why in failed.items())
    job = requests.get(f"{master.url}/api/jobs/{job_id}", timeout=10,
                       headers={"Authorization": f"Bearer {admin}"} if admin else {}).json()
    assert (job["status"], job["worker_id"]) == ("processing", "w1")


def test_after_hostile_uploads_the_lease_holder_still_works(chain):
    """No upload slot, busy marker or lock is leaked by refused uploads (the master has 2 slots)."""
    master, admin, worker = chain
    for _name, send, _statuses in hostile_uploads(master.url, "chain1", worker):
        try:
            send()
        except AssertionError:
            pass
    job = requests.get(f"{master.url}/api/jobs/chain1", timeout=10,
                       headers={"Authorization": f"Bearer {admin}"} if admin else {}).json()
    if job["status"] != "processing":
        submit(master, "chain2", output="out/deep/result-2.mp4", token=admin)
        claim(master, "w1", token=worker)
    job_id = "chain1" if job["status"] == "processing" else "chain2"
    auth = {"Authorization": f"Bearer {worker}"} if worker else {}
    beat = requests.post(f"{master.url}/api/worker/heartbeat?job_id={job_id}",
                         json={"worker_id": "w1", "progress": 99}, headers=auth, timeout=10)
    assert beat.status_code == 200, beat.text
    data = os.urandom(200_000)
    good = requests.post(f"{master.url}/api/worker/upload-video?job_id={job_id}", files={"video": ("o.mp4", data)},
                         headers=auth, timeout=10)
    assert good.status_code == 200, good.text
    output = json.loads(good.text)["output_path"]
    assert (master.root / output).read_bytes() == data


def test_hostile_tus_patches_to_a_live_upload_keep_its_offset(chain):
    """create → claim → tus upload 60 % done → hostile PATCHes → offset, file and job unchanged → resume works."""
    master, admin, worker = chain
    auth = {"Authorization": f"Bearer {worker}"} if worker else {}
    data = os.urandom(100_000)
    created = requests.post(f"{master.url}/api/uploads", timeout=10, headers={
        **auth, "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
        "Upload-Metadata": f"job_id {b64(b'chain1')},sha256 {b64(hashlib.sha256(data).digest())}"})
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    tus = {**auth, "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    first = requests.patch(master.url + location, data=data[:60_000], headers={**tus, "Upload-Offset": "0"}, timeout=10)
    assert first.status_code == 204, first.text
    before = snapshot(master, admin)
    hostile = [
        ({"Upload-Offset": "0"}, data[:10], (409,)),
        ({"Upload-Offset": "-60000"}, data[:10], (400,)),
        ({"Upload-Offset": "60000", "Upload-Checksum": "sha256 !!"}, data[60_000:60_010], (400,)),
        ({"Upload-Offset": "60000", "Upload-Checksum": f"md5 {b64(hashlib.md5(b'x').digest())}"}, data[60_000:60_010],
         (400,)),
        ({"Upload-Offset": "60000", "Upload-Checksum": f"sha1 {b64(hashlib.sha1(b'x').digest())}"}, data[60_000:60_010],
         (460,)),
        ({"Upload-Offset": "60000"}, os.urandom(50_000), (413,)),
        ({"Upload-Offset": "60000", "Tus-Resumable": "0.2.2"}, data[60_000:60_010], (412,)),
        ({"Upload-Offset": "60000", "Content-Type": "text/plain"}, data[60_000:60_010], (415,)),
    ]
    failures = []
    for change, body, statuses in hostile:
        answer = exchange(master.url, request_head("PATCH", location, {**tus, **change, "Content-Length": str(len(body))}),
                          [body])
        try:
            check_refusal(answer, statuses)
            check_unchanged(master, before, admin, settle=True, ignore_mtime=True)
        except AssertionError as exc:
            failures.append(f"{change}: {str(exc).splitlines()[0][:300]}")
    assert not failures, "\n".join(failures)
    offset = requests.head(master.url + location, headers=tus, timeout=10).headers["Upload-Offset"]
    assert offset == "60000"
    rest = requests.patch(master.url + location, data=data[60_000:], headers={**tus, "Upload-Offset": "60000"},
                          timeout=10)
    assert rest.status_code == 204, rest.text
    assert (master.root / "out/deep/result.mp4").read_bytes() == data


# --- schemathesis: stateful run over OpenAPI links ------------------------------------------------------------

SM_CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
             "response_schema_conformance"]
SM_SUITES = 4  # state machine runs over every route
SM_SCENARIOS = 25  # hypothesis examples (scenarios) per run
SM_STEPS = 10  # calls per scenario at most
# Over every route, about 18 of ~445 links lead to an upload at a claimed job: whether the broad runs get there is
# luck (a loaded CI machine once went 23 suites without). The lifecycle runs keep only the routes of a job's way
# from submit to upload, so the claim → upload link is one of a few, and run until an upload reached a real job.
LIFECYCLE = ("/api/jobs", "/api/worker/register", "/api/worker/claim", "/api/worker/heartbeat",
             "/api/worker/upload-video")
LIFECYCLE_MAX_SUITES = 20


def _stateful_spec(url: str, only: tuple[str, ...] | None = None) -> dict:
    """The served description, with the submit constrained to the source that exists (so jobs are made and the
    links from them are followed), claims that do not long-poll, and no pause routes. The links themselves are the ones
    schemathesis infers (job ``id`` in a response → ``job_id`` of the next call: submit/claim/list → claim,
    heartbeat, fail, release, complete, download, upload, cancel, retry, output)."""
    spec = requests.get(f"{url}/api/openapi.json", timeout=10).json()
    spec["servers"] = [{"url": url}]
    # a pause makes every later claim answer 204 by design, and the chain would stop at the claim
    for paused in ("/api/queue/pause", "/api/workers/{worker_id}/pause"):
        del spec["paths"][paused]
    if only is not None:
        spec["paths"] = {path: item for path, item in spec["paths"].items() if path in only}
    operations = {op["operationId"]: op for item in spec["paths"].values() for op in item.values()
                  if isinstance(op, dict) and "operationId" in op}
    submit_schema = operations["submitJob"]["requestBody"]["content"]["application/json"]["schema"]
    submit_schema["properties"].update({
        "source_path": {"type": "string", "enum": [SOURCE]},
        "profile": {"type": "string", "enum": ["h264-720p"]},
        "output_path": {"type": "string", "pattern": r"^out/[a-z]{1,12}\.mp4$"},
    })
    claim_schema = operations["claimJob"]["requestBody"]["content"]["application/json"]["schema"]
    claim_schema["properties"]["wait"] = {"type": "number", "enum": [0]}
    return spec


@pytest.fixture
def sm_master(tmp_path):
    from tests.hostile.conftest import _start

    running = _start(tmp_path)
    yield running
    running.stop()


@dataclasses.dataclass
class Walk:
    """What the state machines saw: every (operation, status), the checks that failed, the job ids claims handed
    out, and the statuses of uploads sent to one of those jobs."""

    seen: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    failures: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    claimed: set[str] = dataclasses.field(default_factory=set)
    uploads_to_claimed_jobs: list[int] = dataclasses.field(default_factory=list)

    def record(self, case, response) -> None:
        label, status = case.operation.label, response.status_code
        self.seen.add((label, status))
        if label == "POST /api/worker/claim" and status == 200:
            self.claimed.add(response.json()["id"])
        if label == "POST /api/worker/upload-video" and (case.query or {}).get("job_id") in self.claimed:
            self.uploads_to_claimed_jobs.append(status)


def test_schemathesis_stateful_chain_submit_claim_upload(sm_master):
    """Bounded state machines over the inferred links: no step gets a 5xx or an answer the description forbids, and
    the lifecycle runs carry a claimed job's id into an upload."""
    walk = Walk()
    broad = _state_machine(_stateful_spec(sm_master.url), walk)
    for _ in range(SM_SUITES):
        _run_suite(broad)
    lifecycle = _state_machine(_stateful_spec(sm_master.url, only=LIFECYCLE), walk)
    suites = 0
    while suites < LIFECYCLE_MAX_SUITES and not walk.uploads_to_claimed_jobs:
        suites += 1
        _run_suite(lifecycle)
    assert not walk.failures, "\n\n".join(f"{label} -> {status}: {text}"
                                           for (label, status), text in walk.failures.items())
    assert ("POST /api/jobs", 201) in walk.seen and ("POST /api/worker/claim", 200) in walk.seen, sorted(walk.seen)
    assert walk.uploads_to_claimed_jobs, (
        f"no upload reached a claimed job in {suites} lifecycle suites: {sorted(walk.seen)}")


def _state_machine(spec: dict, walk: Walk):
    """The state machine of ``spec``; every answer is checked and recorded in ``walk``."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=spec["servers"][0]["url"])
    checks = [getattr(schemathesis.checks, name) for name in SM_CHECKS]
    inferred = schema.as_state_machine()
    chained = {link.target.label for link in inferred._transitions.operations["POST /api/worker/claim"].outgoing}
    assert "POST /api/worker/upload-video" in chained, "no link from claim to upload: nothing stateful would run"

    class Machine(inferred):
        def validate_response(self, response, case, additional_checks=None, **kwargs):
            walk.record(case, response)
            # failures are collected, not raised: a raise makes hypothesis replay the scenario, and a live
            # master's state makes that replay differ (FlakyStrategyDefinition) instead of reporting the bug
            try:
                case.validate_response(response, checks=checks, transport_kwargs=kwargs or None)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - FailureGroup is a BaseExceptionGroup
                walk.failures.setdefault((case.operation.label, response.status_code),
                                         f"{str(exc)[:600]}\n    request: {case.as_curl_command()[:400]}")

    return Machine


def _run_suite(machine) -> None:
    """One Hypothesis run of ``machine``. A live master's state changes which links can be followed, so Hypothesis
    sometimes finds a scenario it is replaying behaves differently and stops with Flaky (schemathesis' own runner
    treats that as the end of a suite and starts another): the suite then simply ends early."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.errors import Flaky

    try:
        machine.run(settings=settings(max_examples=SM_SCENARIOS, stateful_step_count=SM_STEPS, deadline=None,
                                      database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    except Flaky:
        pass
