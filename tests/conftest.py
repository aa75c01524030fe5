from __future__ import annotations

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


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS) with one bucket; tests using it carry ``pytest.mark.xdist_group("s3")`` so
    that one test process runs them all and starts it once."""
    from tests.seaweedfs import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()
