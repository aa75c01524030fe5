"""docs/openapi.yaml: a valid OpenAPI 3 document, naming every route, served by the master, and true of it.

The schemathesis part sends a bounded number of generated requests to each operation of a live
master and checks that none gets a 5xx and that every answer (status, content type, body) is one
the description allows.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from master.app import make_app
from master.config import parse_profiles
from master.handlers.openapi import SPEC_PATH
from tests.fixtures import ThreadedMaster, master_config

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 15
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance"]


def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_the_description_is_valid_openapi_3():
    validate(spec())


def test_every_route_is_described_and_every_described_path_is_routed(tmp_path):
    app = make_app(master_config(tmp_path), store=None)  # the route table only: no request is served
    routed = {_template(rule.matcher.regex.pattern) for rule in app.wildcard_router.rules}
    console = {path for path in routed if path == "/" or path.startswith("/console/")}  # HTML: docs/console.md
    assert routed - console == set(spec()["paths"])


def _template(pattern: str) -> str:
    """``/api/jobs/(?P<job_id>[^/]+)/cancel$`` → ``/api/jobs/{job_id}/cancel``."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).rstrip("$")
    return path.replace("\\.", ".")


def test_the_master_serves_the_description(master):
    response = requests.get(f"{master.url}/api/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == spec()


@schemathesis.serializer("application/offset+octet-stream")
def _tus_chunk(ctx, value):
    """A tus PATCH body is raw bytes: send whatever the strategy made, as bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def live_master(tmp_path_factory):
    # Claims must not long-poll for seconds on every generated request. A configured profile with track rules, so
    # that GET /api/profiles answers with one too.
    config = master_config(tmp_path_factory.mktemp("openapi"), max_claim_wait=0.1)
    config = dataclasses.replace(config, profiles=parse_profiles(
        {"anime-jpn": {"base": "h264-720p", "audio_languages": ["jpn", "eng"], "audio_channels": 2,
                       "subtitle_languages": ["eng"], "priority": 5}}, "profiles"))
    running = ThreadedMaster(config)
    yield running
    running.stop()


def test_live_master_conforms(live_master):
    # schemathesis' own pytest plugin (from_fixture) breaks on pytest 9, so each operation gets a
    # plain hypothesis test here; every operation is run, and all failures are reported together.
    api = schemathesis.openapi.from_url(f"{live_master.url}/api/openapi.json")
    checks = [getattr(schemathesis.checks, name) for name in CHECKS]
    failures = {}
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(checks=checks)

        try:
            conforms()
        except Exception as exc:  # a check failed: keep going to report every operation at once
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
