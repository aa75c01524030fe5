"""Append a stream of chunks to a file through a few reused, page-aligned buffers written by one helper thread.

The receiving thread (a requests download loop on the worker, the IOLoop on the master) copies each
chunk into the current buffer; a full buffer goes to the helper thread, which writes it with one
``os.write``, and (unless ``hash_in_caller``) at the same time to a hashing thread. ``os.write`` and
``hashlib`` release the GIL, so receiving, writing and hashing overlap.

Why buffers and not the chunks themselves: holding on to a few MiB of received chunks until they are
written made glibc hand the freed heap back to the kernel and fault it in again for every batch, ~1M page
faults per 2 GiB on the VMs we measured on. The buffers are allocated once (``mmap``) and reused.

Why page-aligned: with ``direct=True`` the file (a regular file at an aligned offset, on a filesystem that
allows it) is written with ``O_DIRECT``, straight from the buffers to the device. Writing a multi-GB
video through the page cache costs a page allocation per 4 KiB, which on these VMs is the slowest and
noisiest part of a transfer (``dd`` of 1 GiB: 0.42-0.82 GB/s buffered, 1.8-1.9 GB/s with
``oflag=direct``; docs/benchmarks.md), and the master's fsync before its rename has nothing left to
flush. The last, partial buffer is written padded to the block size and the file truncated back.
Where ``O_DIRECT`` is refused (tmpfs, pipes, an unaligned resume offset) the writes are ordinary ones.

At most ``max_in_flight_bytes`` wait for the thread, plus the buffer being filled, so memory stays
bounded whatever the file size. With ``hash_in_caller`` the collecting thread hashes each chunk as it
arrives (receive + hash | write: the worker's download, where the requests loop is otherwise idle);
without it the master's IOLoop only copies (receive | write | hash). Either way, after a write error
(``failed``) the hashers may be ahead of the file, and the caller must drop what it wrote.

Two front ends share the state: ``write``/``finish`` block (worker threads), ``awrite``/``afinish``
await (the master's IOLoop). Both are used by one thread at a time. A reader that can receive straight
into memory (the master's socket, ``recv_into``) asks for ``space`` and reports it ``filled`` instead of
handing over chunks: then no chunk object is made and nothing is copied on the way to the thread.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

MiB = 1 << 20
ALIGN = 4096  # O_DIRECT wants buffer, length and file offset aligned to the device's block size (<= a page)


class BatchWriter:
    """Write and hash chunks in order, a buffer at a time, in a helper thread; see the module docstring.

    Args:
        fd: an open file descriptor; the data is appended at its current position.
        hashers: objects with ``update(bytes)``, fed each byte once.
        batch_bytes: the size of one buffer (one ``write``).
        max_in_flight_bytes: how much may wait for the thread before the producer waits.
        direct: write with ``O_DIRECT`` where the file allows it.
    """

    def __init__(self, fd: int, hashers: Iterable = (), *, batch_bytes: int = 4 * MiB,
                 max_in_flight_bytes: int = 8 * MiB, hash_in_caller: bool = False, direct: bool = False,
                 name: str = "batch-writer"):
        self._fd = fd
        self._hashers = tuple(hashers)
        self._hash_in_caller = hash_in_caller
        self.failed = False  # a write raised: the hashers may be ahead of ``written``
        self.batch_bytes = -(-batch_bytes // ALIGN) * ALIGN
        self.direct = direct and _enable_direct(fd, self.batch_bytes)
        count = max(1, max_in_flight_bytes // self.batch_bytes) + 1  # in flight, plus the one being filled
        self._free = [mmap.mmap(-1, self.batch_bytes) for _ in range(count)]
        self._all = list(self._free)
        self._current = self._free.pop()
        self._filled = 0
        self._overflow: deque[memoryview] = deque()  # arrived while every buffer was full
        self._in_flight: deque[tuple[Future, mmap.mmap]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # hashing gets its own thread, so a buffer is hashed while it is written (both only read it)
        self._hash_executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-hash")
                               if self._hashers and not self._hash_in_caller else None)
        self._closed = False
        self.written = 0  # bytes written (and hashed, unless in the caller); updated by the helper thread

    # -- collecting (any thread, never blocks) ------------------------------------------------------

    def add(self, chunk: bytes) -> None:
        """Take ``chunk``: copied into the buffers, or kept aside while all of them wait for the thread."""
        if self._closed:
            raise ValueError("BatchWriter is closed")
        if not chunk:
            return
        if self._hash_in_caller:
            for hasher in self._hashers:
                hasher.update(chunk)
        if self._overflow:
            self._overflow.append(memoryview(chunk))
        else:
            self._fill(memoryview(chunk))

    @property
    def in_flight_bytes(self) -> int:
        return len(self._in_flight) * self.batch_bytes

    # -- blocking front end (worker) -----------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Take ``chunk``, waiting for the thread when every buffer is full. Raises a write error."""
        self.add(chunk)
        self._wait_for_buffers()

    def finish(self) -> int:
        """Write what is left, wait for the thread, stop it; returns ``written``. Raises a write error."""
        try:
            self._wait_for_buffers()
            self._submit()
            while self._in_flight:
                self._reclaim_oldest()
        finally:
            self.abandon().result()
        return self.written

    # -- awaiting front end (IOLoop) ------------------------------------------------------------

    async def awrite(self, chunk: bytes) -> None:
        self.add(chunk)
        await self.submit_ready()

    async def submit_ready(self) -> None:
        """If chunks wait for a buffer: wait (without blocking the loop) until they are all in one."""
        while self._overflow:
            await self._await_oldest()
            self._refill()

    async def space(self) -> memoryview:
        """The unfilled rest of the buffer being filled, for a reader to receive into directly (``recv_into``)
        instead of handing over chunks; waits (without blocking the loop) while every buffer is with the thread.
        Report what was put there with ``filled``."""
        if self._closed:
            raise ValueError("BatchWriter is closed")
        await self.submit_ready()
        while self._current is None:
            await self._await_oldest()
        return memoryview(self._current)[self._filled:]

    def filled(self, count: int) -> None:
        """``count`` bytes were received into the view ``space`` returned: they go to the thread with their buffer."""
        if self._closed or not count:
            return
        start, self._filled = self._filled, self._filled + count
        if self._hash_in_caller:
            with memoryview(self._current) as whole, whole[start:self._filled] as data:
                for hasher in self._hashers:
                    hasher.update(data)
        if self._filled == self.batch_bytes:
            self._submit()

    def find(self, needle: bytes, start: int, end: int) -> int:
        """Where ``needle`` first is in the space's bytes ``[start, end)`` (offsets into what ``space`` returned,
        searched in place, without a copy); -1 if it is not there."""
        found = self._current.find(needle, self._filled + start, self._filled + end)
        return found - self._filled if found >= 0 else -1

    async def afinish(self) -> int:
        """``finish`` for the IOLoop."""
        try:
            await self.submit_ready()
            self._submit()
            while self._in_flight:
                await self._await_oldest()
        finally:
            await asyncio.wrap_future(self.abandon())
        return self.written

    async def drain(self) -> int:
        """Wait for the submitted buffers only (errors swallowed), drop the rest; stop the thread."""
        while self._in_flight:
            try:
                await self._await_oldest()
            except Exception:  # noqa: BLE001 - ``written`` already says how far the file got
                pass
        await asyncio.wrap_future(self.abandon())
        return self.written

    # -- ending -----------------------------------------------------------------------------------

    def abandon(self, then_close: object = None) -> Future:
        """Stop taking chunks and let the thread end after what is in flight; never blocks.

        ``then_close``: a file object (or fd) the thread closes after its last write, so a caller
        that gives up early never closes the descriptor under a running ``write``. Returns the
        future of the thread's last task (O_DIRECT off again, buffers freed, ``then_close`` closed).
        """
        self._overflow.clear()
        self._filled = 0
        if not self._closed:
            self._closed = True
            self._released = self._executor.submit(self._release, then_close)
            self._executor.shutdown(wait=False)
        elif then_close is not None:
            self._released.add_done_callback(lambda _f: _close(then_close))
        return self._released

    # -- internals --------------------------------------------------------------------------------

    def _fill(self, view: memoryview) -> None:
        """Copy ``view`` into the buffers, handing each full one to the thread; keep what does not fit."""
        while view:
            if self._current is None:  # every buffer is with the thread
                self._overflow.append(view)
                return
            n = min(len(view), self.batch_bytes - self._filled)
            self._current[self._filled:self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == self.batch_bytes:
                self._submit()

    def _refill(self) -> None:
        pending, self._overflow = self._overflow, deque()
        while pending:
            self._fill(pending.popleft())
            if self._overflow:
                self._overflow.extend(pending)
                return

    def _submit(self) -> None:
        if not self._filled:
            return
        buffer, size = self._current, self._filled
        future = self._executor.submit(self._write_buffer, buffer, size)
        if self._hash_executor is not None:
            future = _both(future, self._hash_executor.submit(self._hash_buffer, buffer, size))
        self._in_flight.append((future, buffer))
        self._current = self._free.pop() if self._free else None
        self._filled = 0

    def _wait_for_buffers(self) -> None:
        """``submit_ready`` for the blocking front end."""
        while self._overflow:
            self._reclaim_oldest()
            self._refill()

    def _reclaim_oldest(self) -> None:
        future, buffer = self._in_flight[0]
        try:
            future.result()
        finally:
            self._in_flight.popleft()
            self._give_back(buffer)

    async def _await_oldest(self) -> None:
        future, buffer = self._in_flight[0]
        try:
            await asyncio.wrap_future(future)
        finally:
            if self._in_flight and self._in_flight[0][0] is future:
                self._in_flight.popleft()
                self._give_back(buffer)

    def _give_back(self, buffer: mmap.mmap) -> None:
        if self._current is None:
            self._current = buffer
        else:
            self._free.append(buffer)

    def _write_buffer(self, buffer: mmap.mmap, size: int) -> None:
        """In the helper thread: write ``size`` bytes of ``buffer``, all of them, or raise."""
        if self.failed:
            raise OSError("an earlier write failed")
        try:
            with memoryview(buffer) as whole:
                if self.direct and size % ALIGN:
                    self._write_padded_tail(whole, size)
                else:
                    self._write_all(whole[:size])
        except OSError:
            self.failed = True
            raise
        self.written += size

    def _hash_buffer(self, buffer: mmap.mmap, size: int) -> None:
        """In the hashing thread, at the same time as the write of the same buffer."""
        with memoryview(buffer) as whole, whole[:size] as data:
            for hasher in self._hashers:
                hasher.update(data)

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self.direct = _disable_direct(self._fd)  # a filesystem that took the flag but not the write
                continue
            if n == 0:
                raise OSError("write wrote nothing")
            if n < len(view) and self.direct:
                self.direct = _disable_direct(self._fd)  # a short direct write leaves the offset unaligned
            view = view[n:]

    def _write_padded_tail(self, whole: memoryview, size: int) -> None:
        """O_DIRECT writes whole blocks: write the tail zero-padded, then cut the file back to its length."""
        start = os.lseek(self._fd, 0, os.SEEK_CUR)
        padded = -(-size // ALIGN) * ALIGN
        whole[size:padded] = bytes(padded - size)
        self._write_all(whole[:padded])
        os.ftruncate(self._fd, start + size)
        os.lseek(self._fd, start + size, os.SEEK_SET)

    def _release(self, then_close: object) -> None:
        """Last task of the thread: drop O_DIRECT from the caller's descriptor, free the buffers, close."""
        if self._hash_executor is not None:
            self._hash_executor.shutdown(wait=True)
        if self.direct:
            _disable_direct(self._fd)
        for buffer in self._all:
            try:
                buffer.close()
            except BufferError:
                pass  # a view is still held by a failed write's traceback: freed with it
        if then_close is not None:
            _close(then_close)


def _both(first: Future, second: Future) -> Future:
    """A future done when both are; it fails with the first one's error (the write's), else the second's."""
    both: Future = Future()

    def settle(_done: Future) -> None:
        if first.done() and second.done() and not both.done():
            error = first.exception() or second.exception()
            if error is not None:
                both.set_exception(error)
            else:
                both.set_result(None)

    first.add_done_callback(settle)
    second.add_done_callback(settle)
    return both


def _enable_direct(fd: int, batch_bytes: int) -> bool:
    """Turn on O_DIRECT for a regular file at an aligned position; False where it is refused."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct or batch_bytes % ALIGN:
        return False
    try:
        info = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        position = info.st_size if flags & os.O_APPEND else os.lseek(fd, 0, os.SEEK_CUR)
        if not stat.S_ISREG(info.st_mode) or position % ALIGN:
            return False
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct)
    except OSError:  # EINVAL: the filesystem (tmpfs, some network filesystems) does not do direct I/O
        return False
    return True


def _disable_direct(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    except OSError:
        pass  # the descriptor is gone; nothing more is written through it
    return False


def _close(file: object) -> None:
    try:
        if isinstance(file, int):
            os.close(file)
        else:
            file.close()
    except OSError:
        pass  # nothing left to report it to; the caller has already given up on this file
