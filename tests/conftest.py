from __future__ import annotations

import pytest

from tests.fixtures import ThreadedMaster, make_clip, master_config


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
