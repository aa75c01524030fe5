"""master/errors.py's catalogue: every code declared once per status, all of them in docs/openapi.yaml."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import yaml

from converter_common import protocol
from master import errors

ROOT = Path(__file__).resolve().parents[2]


def documented_codes() -> dict[str, list[int]]:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    return spec["components"]["schemas"]["Error"]["x-error-codes"]


def catalogued_codes() -> dict[str, list[int]]:
    statuses = defaultdict(set)
    for kind in errors.CATALOGUE:
        statuses[kind.code].add(kind.status)
    return {code: sorted(found) for code, found in statuses.items()}


def test_the_spec_lists_exactly_the_catalogued_codes_with_their_statuses():
    assert catalogued_codes() == {code: sorted(found) for code, found in documented_codes().items()}


def test_no_code_is_declared_twice_with_the_same_status():
    pairs = [(kind.code, kind.status) for kind in errors.CATALOGUE]
    assert len(pairs) == len(set(pairs))


def test_the_codes_clients_act_on_are_in_the_catalogue():
    client_codes = {protocol.JOB_NOT_FOUND, protocol.INVALID_JOB_STATE, protocol.NOT_LEASE_OWNER,
                    protocol.OFFSET_MISMATCH, protocol.UPLOAD_BUSY, protocol.DIGEST_MISMATCH, protocol.DUPLICATE_JOB,
                    protocol.DUPLICATE_UPLOAD, *protocol.JOB_GONE_CODES, *protocol.TUS_RESUME_CODES}
    assert client_codes <= set(catalogued_codes())


def test_a_kind_raises_its_status_code_default_message_and_headers():
    error = errors.UNAUTHORIZED.error()
    assert (error.status, error.code) == (401, "unauthorized") and error.message
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    specific = errors.OUTPUT_EXISTS.error("out/a.mp4 exists", headers={"X-Extra": "1"})
    assert (specific.status, specific.code, specific.message) == (409, "output_exists", "out/a.mp4 exists")
    assert specific.headers == {"X-Extra": "1"}


def test_tornados_own_errors_get_catalogued_codes():
    assert errors.code_for_status(405) == "method_not_allowed"
    assert errors.code_for_status(500) == errors.code_for_status(503) == "internal_error"


def test_no_api_error_is_built_and_no_code_is_spelled_outside_the_catalogue():
    codes = set(catalogued_codes())
    for path in (ROOT / "master").rglob("*.py"):
        if path.name == "errors.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ApiError":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} builds an ApiError")
            if isinstance(node, ast.Constant) and node.value in codes and path.parent.name == "handlers":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} spells the code {node.value!r}")
