"""Reading the master's answers: a JSON object, or the error the answer is."""

from __future__ import annotations

from typing import Any

import requests

from converter_client.errors import Refused, TransferCut, body_start


def json_answer(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer; ``Refused`` for an error status, ``TransferCut`` for another body."""
    if response.status_code >= 400:
        raise Refused(response)
    try:
        payload = response.json()
    except ValueError as exc:
        raise TransferCut(f"master sent a non-JSON answer ({response.status_code}): "
                          f"{body_start(response) or '(empty body)'}") from exc
    if not isinstance(payload, dict):
        raise TransferCut(f"master sent an unexpected answer ({response.status_code}): {body_start(response)}")
    return payload
