"""Append a stream of chunks to a file in batches, written (``os.writev``) and hashed in one helper thread.

The receiving thread (a requests download loop on the worker, the IOLoop on the master) only collects
chunks; every ``batch_bytes`` it hands the batch to the helper thread, which writes it and then feeds it
to the hashers. ``os.writev`` and ``hashlib`` release the GIL, so receiving, writing and hashing overlap.
Handing over a few hundred batches per GiB instead of every chunk is what makes the thread pay: a
handoff per 1 MiB chunk cost ~5 futex calls and 2-3 s of sys time per 2 GiB (docs/benchmarks.md).

At most ``max_in_flight_bytes`` of submitted batches wait for the thread (plus the batch being
collected), so memory stays bounded whatever the file size.

Hashing happens in the helper thread (the hashers only ever see bytes that reached the file: after
``finish()`` their state matches ``written`` even after a write error), or with ``hash_in_caller``
in the collecting thread as each chunk arrives, which splits the CPU work evenly between the two
threads (receive + hash | write) and measured faster on 2 cores; then, after a write error
(``failed``), the hashers are ahead of the file and the caller must drop what it wrote.

Two front ends share the state: ``write``/``finish`` block (worker threads), ``awrite``/``afinish``
await (the master's IOLoop). Both are used by one thread at a time.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Sequence

MiB = 1 << 20
IOV_MAX = 1024  # os.writev takes at most this many buffers (Linux)


class BatchWriter:
    """Write and hash chunks in order, in batches, in a helper thread; see the module docstring.

    Args:
        fd: an open file descriptor; the batches are appended at its current position.
        hashers: objects with ``update(bytes)``, fed each byte once it is written.
        batch_bytes: how much is collected before a batch goes to the thread.
        max_in_flight_bytes: how much may wait for the thread before the producer blocks.
    """

    def __init__(self, fd: int, hashers: Iterable = (), *, batch_bytes: int = 4 * MiB,
                 max_in_flight_bytes: int = 8 * MiB, hash_in_caller: bool = False, name: str = "batch-writer"):
        self._fd = fd
        self._hashers = tuple(hashers)
        self._hash_in_caller = hash_in_caller
        self.failed = False  # a write raised: with hash_in_caller the hashers are ahead of ``written``
        self.batch_bytes = batch_bytes
        self.max_in_flight_bytes = max_in_flight_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: deque[tuple[Future, int]] = deque()
        self._in_flight_bytes = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False
        self._last: Future | None = None
        self.received = 0  # bytes handed to write/awrite/add
        self.written = 0  # bytes written and hashed (updated by the helper thread)

    # -- collecting (any thread) ---------------------------------------------------------------

    def add(self, chunk: bytes) -> None:
        """Collect ``chunk``; it goes to the thread with the next batch (see ``batch_ready``)."""
        if self._closed:
            raise ValueError("BatchWriter is closed")
        if chunk:
            if self._hash_in_caller:
                for hasher in self._hashers:
                    hasher.update(chunk)
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            self.received += len(chunk)

    @property
    def batch_ready(self) -> bool:
        return self._pending_bytes >= self.batch_bytes

    # -- blocking front end (worker) -----------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Collect ``chunk``; hand a full batch to the thread, first waiting for room. Raises a write error."""
        self.add(chunk)
        if self.batch_ready:
            while self._in_flight and self._in_flight_bytes + self._pending_bytes > self.max_in_flight_bytes:
                self._collect(self._in_flight[0][0].result)
            self._submit()

    def finish(self) -> int:
        """Write what is left, wait for the thread, stop it; returns ``written``. Raises a write error."""
        try:
            self._submit()
            while self._in_flight:
                self._collect(self._in_flight[0][0].result)
        finally:
            self.abandon()
        return self.written

    # -- awaiting front end (IOLoop) ------------------------------------------------------------

    async def awrite(self, chunk: bytes) -> None:
        self.add(chunk)
        await self.submit_ready()

    async def submit_ready(self) -> None:
        """If a batch is full: wait (without blocking the loop) for room, then hand it over."""
        if self.batch_ready:
            while self._in_flight and self._in_flight_bytes + self._pending_bytes > self.max_in_flight_bytes:
                await self._await_oldest()
            self._submit()

    async def afinish(self) -> int:
        """``finish`` for the IOLoop."""
        try:
            self._submit()
            while self._in_flight:
                await self._await_oldest()
        finally:
            self.abandon()
        return self.written

    async def drain(self) -> int:
        """Wait for the submitted batches only (errors swallowed), drop the unsubmitted rest; stop the thread."""
        self._pending, self._pending_bytes = [], 0
        while self._in_flight:
            try:
                await self._await_oldest()
            except Exception:  # noqa: BLE001 - ``written`` already says how far the file got
                pass
        self.abandon()
        return self.written

    # -- ending -----------------------------------------------------------------------------------

    def abandon(self, then_close: object = None) -> None:
        """Stop taking chunks and let the thread end after what is in flight; never blocks.

        ``then_close``: a file object (or fd) the thread closes after its last write, so a caller
        that gives up early never closes the descriptor under a running ``writev``.
        """
        self._pending, self._pending_bytes = [], 0
        if then_close is not None:
            if not self._closed:
                self._executor.submit(_close, then_close)
            elif self._last is None or self._last.done():
                _close(then_close)
            else:  # ended before (drain, a failed finish) with a batch still being written
                self._last.add_done_callback(lambda _f: _close(then_close))
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=False)

    # -- internals --------------------------------------------------------------------------------

    def _submit(self) -> None:
        if not self._pending:
            return
        batch, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        self._last = self._executor.submit(self._write_batch, batch)
        self._in_flight.append((self._last, size))
        self._in_flight_bytes += size

    def _collect(self, wait) -> None:
        _future, size = self._in_flight[0]
        try:
            wait()
        finally:
            self._in_flight.popleft()
            self._in_flight_bytes -= size

    async def _await_oldest(self) -> None:
        future, size = self._in_flight[0]
        try:
            await asyncio.wrap_future(future)
        finally:
            if self._in_flight and self._in_flight[0][0] is future:
                self._in_flight.popleft()
                self._in_flight_bytes -= size

    def _write_batch(self, batch: Sequence[bytes]) -> None:
        """In the helper thread: write all of ``batch``, hashing each byte once it is on file."""
        views = [memoryview(b) for b in batch]
        i = 0
        while i < len(views):
            try:
                n = os.writev(self._fd, views[i:i + IOV_MAX])
                if n == 0:
                    raise OSError("writev wrote nothing")
            except OSError:
                self.failed = True
                raise
            while n > 0:  # hash what was written: whole buffers, and the written head of a partial one
                view = views[i]
                if n >= len(view):
                    self._hashed(view)
                    n -= len(view)
                    i += 1
                else:
                    self._hashed(view[:n])
                    views[i] = view[n:]
                    n = 0
            while i < len(views) and not len(views[i]):
                i += 1

    def _hashed(self, data: memoryview) -> None:
        if not self._hash_in_caller:
            for hasher in self._hashers:
                hasher.update(data)
        self.written += len(data)


def _close(file: object) -> None:
    try:
        if isinstance(file, int):
            os.close(file)
        else:
            file.close()
    except OSError:
        pass  # nothing left to report it to; the caller has already given up on this file
