"""Write a download to disk and hash it while it streams, without a per-chunk thread handoff.

The network loop hashes each ``iter_content`` chunk as it arrives and copies it into one of a few
reused 4 MiB buffers; each full buffer goes to a helper thread that writes it (``O_DIRECT`` with
``direct=True``, ``converter_common.background_file_writer``). So the two threads split the work (recv + hash |
write; hashlib and the write release the GIL). Handing every 1 MiB chunk through a ``queue.Queue`` to a
thread that wrote *and* hashed it cost ~5 futex calls per chunk and made the verified download slower
than ``curl -o`` + ``openssl dgst`` (docs/benchmarks.md, which also has the variants measured). At most
8 MiB wait for the thread, so memory stays flat whatever ``storage.chunk_size`` is.
"""

from __future__ import annotations

from typing import BinaryIO

from converter_common.background_file_writer import BatchWriter, MiB

BATCH_BYTES = 4 * MiB
IN_FLIGHT_BYTES = 8 * MiB


class HashingWriter:
    """Append chunks to ``file`` (unbuffered, owned: closed by ``close``) and feed them to ``hasher``.

    After a clean ``close()`` (or one that fails on the network side) the hasher's state matches the
    file's length, so a resumed download can continue hashing from there. After a *write* error it is
    ahead of the file (it saw bytes that never reached it): the download must start over.
    """

    def __init__(self, file: BinaryIO, hasher, *, direct: bool = False) -> None:
        self._file = file
        self._batches = BatchWriter(file.fileno(), (hasher,), hash_in_caller=True, batch_bytes=BATCH_BYTES,
                                    max_in_flight_bytes=IN_FLIGHT_BYTES, direct=direct, name="hashing-writer")

    def write(self, chunk: bytes) -> None:
        self._batches.write(chunk)

    @property
    def written(self) -> int:
        return self._batches.written

    def close(self) -> None:
        """Write and hash what is left, then close the file; re-raise a write error."""
        try:
            self._batches.finish()
        finally:
            self._file.close()
