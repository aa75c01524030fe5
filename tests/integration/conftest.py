from __future__ import annotations

import pytest

from tests.fixtures import Cluster


@pytest.fixture
def cluster(tmp_path):
    """A master process; ``cluster.add_worker()`` starts worker processes against it."""
    running = Cluster(tmp_path)
    yield running
    running.stop()


@pytest.fixture(params=["local", "s3"])
def any_cluster(request, tmp_path):
    """A master process on each storage backend: local files, then a SeaweedFS bucket."""
    bucket = request.getfixturevalue("seaweedfs") if request.param == "s3" else None
    running = Cluster(tmp_path, bucket=bucket)
    yield running
    running.stop()
