from __future__ import annotations

import pytest

from tests.fixtures import Cluster


@pytest.fixture
def cluster(tmp_path):
    """A master process; ``cluster.add_worker()`` starts worker processes against it."""
    running = Cluster(tmp_path)
    yield running
    running.stop()
