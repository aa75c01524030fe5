"""BatchWriter: order, hashes, bounded memory, errors; TokenBucket: the rate it grants."""

import asyncio
import fcntl
import hashlib
import os

import pytest

from converter_common.background_file_writer import BatchWriter
from converter_common.ratelimit import TokenBucket


def chunks(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


@pytest.mark.parametrize("hash_in_caller", [False, True])
def test_blocking_writer_writes_and_hashes_in_order(tmp_path, hash_in_caller):
    data = chunks(50, 100_000)
    hasher = hashlib.sha256()
    with open(tmp_path / "f", "wb", buffering=0) as f:
        writer = BatchWriter(f.fileno(), (hasher,), batch_bytes=300_000, max_in_flight_bytes=600_000,
                             hash_in_caller=hash_in_caller)
        for chunk in data:
            writer.write(chunk)
            assert writer.in_flight_bytes <= 600_000 + 4096  # the producer waits for a free buffer
        assert writer.finish() == 5_000_000
    assert (tmp_path / "f").read_bytes() == b"".join(data)
    assert hasher.digest() == hashlib.sha256(b"".join(data)).digest()


def test_awaiting_writer_matches(tmp_path):
    data = chunks(40, 65_536)
    hasher = hashlib.sha256()

    async def run() -> int:
        with open(tmp_path / "f", "wb", buffering=0) as f:
            writer = BatchWriter(f.fileno(), (hasher,), batch_bytes=1 << 20, max_in_flight_bytes=2 << 20)
            for chunk in data:
                await writer.awrite(chunk)
            return await writer.afinish()

    assert asyncio.run(run()) == 40 * 65_536
    assert hasher.digest() == hashlib.sha256(b"".join(data)).digest()


def test_write_error_is_raised_and_written_counts_only_what_landed(tmp_path):
    r, w = os.pipe()
    os.close(r)  # writing to a pipe with no reader: EPIPE
    writer = BatchWriter(w, (), batch_bytes=10)
    with pytest.raises(OSError):
        for _ in range(5):
            writer.write(b"x" * 20)
        writer.finish()
    assert writer.written == 0 and writer.failed
    os.close(w)


def test_abandon_closes_the_file_after_the_last_write(tmp_path):
    f = open(tmp_path / "f", "wb", buffering=0)
    writer = BatchWriter(f.fileno(), (), batch_bytes=4096)
    writer.write(b"y" * 5000)  # one full buffer goes to the thread; the 904 bytes after it are dropped
    writer.abandon(then_close=f)
    writer._executor.shutdown(wait=True)
    assert f.closed and (tmp_path / "f").read_bytes() == b"y" * 4096


@pytest.mark.parametrize("size", [3 * 65_536, 3 * 65_536 + 1234])
def test_direct_writes_store_exact_bytes_and_leave_the_descriptor_as_it_was(tmp_path, size):
    data = os.urandom(size)
    hasher = hashlib.sha256()
    with open(tmp_path / "f", "wb", buffering=0) as f:
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
        writer = BatchWriter(f.fileno(), (hasher,), batch_bytes=65_536, max_in_flight_bytes=65_536, direct=True)
        assert writer.direct  # ext4 under tmp_path takes O_DIRECT
        for i in range(0, size, 10_000):
            writer.write(data[i:i + 10_000])
        assert writer.finish() == size
        assert f.tell() == size and fcntl.fcntl(f.fileno(), fcntl.F_GETFL) == flags
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.digest() == hashlib.sha256(data).digest()


def test_direct_is_not_used_at_an_unaligned_offset_or_on_a_pipe(tmp_path):
    with open(tmp_path / "f", "wb", buffering=0) as f:
        f.write(b"head")
        writer = BatchWriter(f.fileno(), (), batch_bytes=4096, direct=True)
        assert not writer.direct
        writer.write(b"z" * 5000)
        writer.finish()
    assert (tmp_path / "f").read_bytes() == b"head" + b"z" * 5000
    r, w = os.pipe()
    assert not BatchWriter(w, (), direct=True).direct
    os.close(r)
    os.close(w)


def test_a_resumed_append_continues_after_a_padded_tail(tmp_path):
    """A cut download resumes with ``ab`` after a tail that was written padded and truncated."""
    first, second = os.urandom(10_000), os.urandom(9_000)
    with open(tmp_path / "f", "wb", buffering=0) as f:
        writer = BatchWriter(f.fileno(), (), batch_bytes=4096, direct=True)
        writer.write(first)
        writer.finish()
    with open(tmp_path / "f", "ab", buffering=0) as f:
        writer = BatchWriter(f.fileno(), (), batch_bytes=4096, direct=True)
        assert not writer.direct  # 10,000 is not block-aligned
        writer.write(second)
        writer.finish()
    assert (tmp_path / "f").read_bytes() == first + second


def test_token_bucket_grants_the_rate():
    now = [0.0]
    bucket = TokenBucket(1000, burst=100, clock=lambda: now[0])
    waited = 0.0
    for _ in range(100):  # 100 × 50 bytes = 5000 bytes: 5 s at 1000 B/s (it starts empty)
        delay = bucket.reserve(50)
        now[0] += delay
        waited += delay
    assert waited == pytest.approx(5.0)
    now[0] += 60  # idle for a minute: it saves up the burst only
    assert bucket.reserve(100) == 0.0 and bucket.reserve(100) == pytest.approx(0.1)


def test_a_refused_direct_write_is_done_again_as_an_ordinary_one(tmp_path, monkeypatch):
    data = os.urandom(3 * 4096 + 17)
    real_write = os.write
    refused = []

    def write(fd, view):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and not refused:
            refused.append(len(view))
            raise OSError(22, "Invalid argument")  # what a filesystem without direct I/O support answers
        return real_write(fd, view)

    monkeypatch.setattr(os, "write", write)
    with open(tmp_path / "f", "wb", buffering=0) as f:
        writer = BatchWriter(f.fileno(), (), batch_bytes=4096, max_in_flight_bytes=8192, direct=True)
        writer.write(data)
        assert writer.finish() == len(data) and refused and not writer.direct
    assert (tmp_path / "f").read_bytes() == data
