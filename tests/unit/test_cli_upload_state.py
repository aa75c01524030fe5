"""converterctl's memory of unfinished uploads: found again by the same command, never in the way of an upload."""

import json
import os
import time

import pytest

from converterctl.upload_state import (MAX_AGE, RememberedUpload, UploadKey, UploadStateFile, default_state_path,
                                       parse_upload_expires)

MASTER = "http://master:8080"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "movie.mkv"
    path.write_bytes(b"x" * 1000)
    return path


@pytest.fixture
def warnings():
    return []


@pytest.fixture
def state(tmp_path, warnings):
    return UploadStateFile(tmp_path / "cache" / "converterctl" / "uploads.json", warn=warnings.append)


def key_of(path, profile="h264-720p", output_path=None, job_id=None, master=MASTER):
    return UploadKey.of(master, path, profile, output_path, job_id)


def remembered(location="/api/uploads/abc", job_id="job1", **fields):
    return RememberedUpload(location, job_id, fields.pop("saved_at", time.time()), **fields)


# -- the same command finds its upload; any other does not -----------------------------------------


def test_the_same_command_finds_the_upload_again(state, source):
    state.remember(key_of(source), remembered())
    again = UploadStateFile(state.path, warn=print)  # a later run reads the file anew
    assert again.lookup(key_of(source)) == state.lookup(key_of(source))
    assert again.lookup(key_of(source)).location == "/api/uploads/abc"


def test_the_file_is_named_by_its_absolute_path(state, source, monkeypatch):
    monkeypatch.chdir(source.parent)
    state.remember(key_of(source.relative_to(source.parent)), remembered())
    assert state.lookup(key_of(source)) is not None


@pytest.mark.parametrize("other", [
    {"profile": "h265-1080p"},
    {"output_path": "out/x.mp4"},
    {"job_id": "chosen"},
    {"master": "http://other:8080"},
])
def test_other_options_or_another_master_are_another_upload(state, source, other):
    state.remember(key_of(source), remembered())
    assert state.lookup(key_of(source, **other)) is None


def test_a_changed_file_is_another_upload(state, source):
    state.remember(key_of(source), remembered())
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert state.lookup(key_of(source)) is None


def test_forget_removes_only_that_upload(state, source, tmp_path):
    other = tmp_path / "other.mkv"
    other.write_bytes(b"y" * 10)
    state.remember(key_of(source), remembered())
    state.remember(key_of(other), remembered(job_id="job2"))
    state.forget(key_of(source))
    assert state.lookup(key_of(source)) is None and state.lookup(key_of(other)).job_id == "job2"


# -- the file: replaced whole, pruned, and never a reason for an upload to fail ---------------------------


def test_writing_leaves_only_the_state_file(state, source):
    state.remember(key_of(source), remembered())
    state.forget(key_of(source))
    assert [p.name for p in state.path.parent.iterdir()] == ["uploads.json"]
    assert json.loads(state.path.read_text()) == {"version": 1, "uploads": {}}


def test_an_unwritable_cache_dir_warns_once_and_raises_nothing(tmp_path, source, warnings):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where the cache directory should be: no one can create it, not even root
    state = UploadStateFile(blocker / "converterctl" / "uploads.json", warn=warnings.append)
    state.remember(key_of(source), remembered())
    state.remember(key_of(source), remembered())
    assert state.lookup(key_of(source)) is None
    assert len(warnings) == 1 and "cannot save the upload state" in warnings[0]


def test_an_unreadable_file_is_ignored_then_replaced(state, source, warnings):
    state.path.parent.mkdir(parents=True)
    state.path.write_text("{not json")
    assert state.lookup(key_of(source)) is None
    state.remember(key_of(source), remembered())
    assert state.lookup(key_of(source)).job_id == "job1"
    assert len(warnings) == 1 and "ignoring" in warnings[0]


def test_outdated_entries_are_dropped_on_the_next_write(state, source, tmp_path):
    expired, old, fresh = (tmp_path / name for name in ("expired.mkv", "old.mkv", "fresh.mkv"))
    for path in (expired, old, fresh):
        path.write_bytes(b"z")
    now = time.time()
    state.remember(key_of(expired), remembered(expires_at=now - 1))
    state.remember(key_of(old), remembered(saved_at=now - MAX_AGE - 60))
    state.remember(key_of(fresh), remembered(saved_at=now - MAX_AGE - 60, expires_at=now + 3600))
    state.remember(key_of(source), remembered())
    assert state.lookup(key_of(expired)) is None and state.lookup(key_of(old)) is None
    assert state.lookup(key_of(fresh)) is not None and state.lookup(key_of(source)) is not None


def test_upload_expires_is_an_http_date():
    assert parse_upload_expires("Wed, 25 Jun 2025 16:00:00 GMT") == 1750867200.0
    assert parse_upload_expires("tomorrow") is None
    assert parse_upload_expires(None) is None


def test_the_file_lives_in_the_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "converterctl" / "uploads.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_path() == tmp_path / "home" / ".cache" / "converterctl" / "uploads.json"
