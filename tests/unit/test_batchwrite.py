"""BatchWriter: order, hashes, bounded memory, errors; TokenBucket: the rate it grants."""

import asyncio
import hashlib
import os

import pytest

from converter_common.batchwrite import BatchWriter
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
            assert writer._in_flight_bytes <= 600_000 + 400_000  # room is waited for before a batch goes
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
    writer = BatchWriter(f.fileno(), (), batch_bytes=10)
    writer.write(b"y" * 20)
    writer.abandon(then_close=f)
    writer._executor.shutdown(wait=True)
    assert f.closed and (tmp_path / "f").read_bytes() == b"y" * 20


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
