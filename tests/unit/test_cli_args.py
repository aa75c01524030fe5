"""converterctl's command line: options anywhere, environment defaults, usage errors exit 2."""

import pytest
import requests

from converterctl.cli import DEFAULT_URL, build_parser, main
from converterctl.client import Client, api_error, connection_reason
from converterctl.errors import EXIT_USAGE, UsageError


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_global_options_before_or_after_the_command():
    before = parse("--url", "http://m:1", "--json", "list")
    after = parse("list", "--url", "http://m:1", "--json")
    assert (before.url, before.json) == (after.url, after.json) == ("http://m:1", True)


def test_url_and_token_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVERTER_URL", "http://env:9")
    monkeypatch.setenv("CONVERTER_TOKEN", "secret-token-123456")
    args = parse("workers")
    assert (args.url, args.token) == ("http://env:9", "secret-token-123456")


def test_defaults_without_environment(monkeypatch):
    monkeypatch.delenv("CONVERTER_URL", raising=False)
    monkeypatch.delenv("CONVERTER_TOKEN", raising=False)
    args = parse("profiles")
    assert (args.url, args.token, args.json) == (DEFAULT_URL, None, False)


@pytest.mark.parametrize("argv", [[], ["nope"], ["show"], ["list", "--limit", "x"], ["watch", "--max-time", "0"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_submit_needs_exactly_one_source(capsys):
    assert main(["--url", "http://127.0.0.1:9", "submit"]) == EXIT_USAGE
    assert "--upload" in capsys.readouterr().err


def test_a_url_without_scheme_is_a_usage_error():
    with pytest.raises(UsageError):
        Client("localhost:8080")


def test_token_is_sent_as_bearer():
    assert Client("http://m", "abc").session.headers["Authorization"] == "Bearer abc"
    assert "Authorization" not in Client("http://m").session.headers


def test_api_error_keeps_the_message_and_code():
    response = requests.Response()
    response.status_code = 404
    response._content = b'{"error": "job_not_found", "message": "no job with id \'x\'"}'
    error = api_error(response)
    assert (error.status, error.code) == (404, "job_not_found")
    assert str(error) == "no job with id 'x' (job_not_found, HTTP 404)"


def test_api_error_of_a_non_json_answer_keeps_its_first_line():
    response = requests.Response()
    response.status_code, response.reason = 502, "Bad Gateway"
    response._content = b"<html>bad gateway</html>\nmore"
    assert api_error(response).message == "<html>bad gateway</html>"


def test_connection_reason_is_short():
    exc = requests.ConnectionError("HTTPConnectionPool(host='x', port=1): Max retries exceeded with url: /api "
                                   "(Caused by NewConnectionError(\"...: Failed to establish a new connection: "
                                   "[Errno 111] Connection refused\"))")
    assert connection_reason(exc) == "Connection refused"
    assert connection_reason(requests.ReadTimeout("read timed out")) == "timed out"


def test_no_resume_is_a_submit_flag():
    assert parse("submit", "--upload", "movie.mkv", "--no-resume").no_resume is True
    assert parse("submit", "--upload", "movie.mkv").no_resume is False
