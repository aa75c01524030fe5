"""The fault-injection suite: real processes, faults injected on purpose (its summary table: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.fixtures import Cluster


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path, lease_seconds=3)
    yield running
    running.stop()
