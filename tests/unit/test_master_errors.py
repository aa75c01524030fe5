"""The master's error answers, as the worker's errors: the master's own words, and the type they call for."""

import json

import pytest
import requests

from worker.client import _json_or_raise, _raise_for_status
from worker.errors import ApiRejected, JobLost, MasterUnreachable, RetryableError


def answer(status: int, body: str | bytes, content_type: str = "application/json", reason: str = ""
           ) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response.headers["Content-Type"] = content_type
    response._content = body.encode() if isinstance(body, str) else body
    response.encoding = "utf-8"
    return response


def error_of(response: requests.Response) -> Exception:
    with pytest.raises(Exception) as caught:
        _json_or_raise(response)
    return caught.value


def test_a_5xx_carries_the_masters_error_and_message():
    error = error_of(answer(500, json.dumps({"error": "internal_error", "message": "database is locked"}),
                            reason="Internal Server Error"))
    assert type(error) is RetryableError
    assert str(error) == "master answered 500 internal_error: database is locked"


def test_a_non_json_5xx_carries_the_start_of_its_body():
    page = "<html><title>500: Internal Server Error</title><body>Traceback: disk I/O error" + "x" * 500
    error = error_of(answer(500, page, "text/html", reason="Internal Server Error"))
    assert "disk I/O error" in str(error) and len(str(error)) < 260


def test_an_error_without_a_body_names_the_status():
    error = error_of(answer(500, b"", "text/plain", reason="Internal Server Error"))
    assert str(error) == "master answered 500 http_error: Internal Server Error"


def test_a_json_error_of_another_shape_is_shown_as_it_came():
    error = error_of(answer(500, json.dumps(["unexpected", "shape"])))
    assert isinstance(error, RetryableError) and '["unexpected", "shape"]' in str(error)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_answering_for_an_absent_master_means_the_master_is_away(status):
    error = error_of(answer(status, "<html>Bad Gateway</html>", "text/html"))
    assert isinstance(error, MasterUnreachable) and "Bad Gateway" in str(error)


def test_4xx_answers_keep_their_code_and_message():
    gone = error_of(answer(409, json.dumps({"error": "not_lease_owner", "message": "leased to w2"})))
    assert isinstance(gone, JobLost) and str(gone) == "master answered 409 not_lease_owner: leased to w2"
    refused = error_of(answer(409, json.dumps({"error": "output_exists", "message": "out/a.mp4 exists"})))
    assert type(refused) is ApiRejected and "out/a.mp4 exists" in str(refused)


def test_a_success_that_is_not_json_is_shown():
    error = error_of(answer(200, "<html>captive portal</html>", "text/html"))
    assert isinstance(error, RetryableError) and "captive portal" in str(error)


def test_success_passes():
    _raise_for_status(answer(204, b""))
    assert _json_or_raise(answer(200, '{"status": "pending"}')) == {"status": "pending"}
