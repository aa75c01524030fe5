from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fixtures import ThreadedMaster, make_clip, master_config

_fault_results: list[tuple[str, str, float]] = []  # the fault suite's summary (here: xdist's controller loads this file)


@pytest.fixture
def master(tmp_path):
    """A real master on a loopback port, with its own SQLite file and storage root under tmp_path."""
    running = ThreadedMaster(master_config(tmp_path))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def clip_2s(tmp_path_factory):
    """A 2-second 1080p H.264/AAC clip, made once per test session."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0)


def pytest_runtest_logreport(report):
    if report.when == "call" and "tests/faults/" in report.nodeid:
        name = report.nodeid.split("::", 1)[1]
        _fault_results.append((name, report.outcome, report.duration))


def pytest_terminal_summary(terminalreporter):
    if not _fault_results:
        return
    terminalreporter.section("fault-injection summary")
    width = max(len(name) for name, _, _ in _fault_results)
    terminalreporter.write_line(f"| {'case'.ljust(width)} | result | seconds |")
    terminalreporter.write_line(f"|{'-' * (width + 2)}|--------|---------|")
    for name, outcome, seconds in _fault_results:
        terminalreporter.write_line(f"| {name.ljust(width)} | {outcome:<6} | {seconds:7.1f} |")


# One SeaweedFS for the whole test session: with xdist the controller starts it before the test processes and
# hands them its address in the environment (they inherit it); a run without xdist starts it on first use.
S3_ENV = "CONVERTER_TEST_S3"
_controller_s3 = None


def pytest_configure(config):
    global _controller_s3
    if hasattr(config, "workerinput") or os.environ.get(S3_ENV) or not getattr(config.option, "numprocesses", None):
        return
    from tests.seaweedfs import SeaweedFS

    _controller_s3 = SeaweedFS(Path(tempfile.mkdtemp(prefix="converter-test-s3-"))).start()
    os.environ[S3_ENV] = _controller_s3.endpoint


def pytest_unconfigure(config):
    if _controller_s3 is not None:
        _controller_s3.stop()
        shutil.rmtree(_controller_s3.workdir, ignore_errors=True)
        os.environ.pop(S3_ENV, None)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS) with one bucket, shared by the whole session: give each test its own key
    prefix (``seaweedfs.prefix()``). A test that stops the server starts one of its own (``SeaweedFS(...)``)."""
    from tests.seaweedfs import SeaweedFS

    if os.environ.get(S3_ENV):
        yield SeaweedFS.running_at(os.environ[S3_ENV])
        return
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()
