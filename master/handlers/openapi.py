"""/api/openapi.json: the OpenAPI 3 description of this API (``docs/openapi.yaml``), as JSON.

The YAML is read and converted once, when this module is imported with the route table at start;
a broken file stops the master there rather than at the first request. An install without the
``docs/`` tree (a wheel) answers 404 ``openapi_unavailable``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def load_spec(path: Path) -> bytes | None:
    """The spec as compact JSON bytes, or None when the file is not there."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.dumps(yaml.safe_load(text), separators=(",", ":")).encode()


SPEC_JSON = load_spec(SPEC_PATH)


class OpenApiHandler(BaseHandler):
    access = {"GET": Access.OPEN}

    def get(self) -> None:
        if SPEC_JSON is None:
            raise errors.OPENAPI_UNAVAILABLE.error()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(SPEC_JSON)
