"""The fault-injection suite: real processes, faults injected on purpose, a summary table at the end."""

from __future__ import annotations

import pytest

from tests.fixtures import Cluster

_results: list[tuple[str, str, float]] = []


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path, lease_seconds=3)
    yield running
    running.stop()


def pytest_runtest_logreport(report):
    if report.when == "call" and "tests/faults/" in report.nodeid:
        name = report.nodeid.split("::", 1)[1]
        _results.append((name, report.outcome, report.duration))


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    terminalreporter.section("fault-injection summary")
    width = max(len(name) for name, _, _ in _results)
    terminalreporter.write_line(f"| {'case'.ljust(width)} | result | seconds |")
    terminalreporter.write_line(f"|{'-' * (width + 2)}|--------|---------|")
    for name, outcome, seconds in _results:
        terminalreporter.write_line(f"| {name.ljust(width)} | {outcome:<6} | {seconds:7.1f} |")
