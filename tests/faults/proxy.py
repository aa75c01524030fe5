"""A TCP proxy that injects faults between a worker and the master (the only fake we allow: a fault)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Fault:
    """Cut the connection, or flip one byte, once ``after_bytes`` more bytes went one way.

    Bytes are counted over all connections in that direction, from the moment the fault is added,
    so it fires at the same point of the traffic however the client spreads it over connections.
    """

    direction: str  # "down" (master → worker) or "up" (worker → master)
    after_bytes: int
    action: str = "cut"  # or "flip": invert one byte and carry on
    fire_at: int = field(default=0, init=False)
    fired: bool = field(default=False, init=False)


@dataclass
class Watch:
    """Once, at the first bytes going ``up`` that match ``pattern`` (a request line): hold back the answer on
    that connection until ``hold_reply`` is set (the sender waits as if the answer were lost, while the request
    itself goes through whole), and call ``action`` before passing the bytes on."""

    pattern: re.Pattern[bytes]
    action: Callable[[], None] | None = None
    hold_reply: threading.Event | None = None
    fired: bool = field(default=False, init=False)


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.faults: list[Fault] = []
        self.watches: list[Watch] = []
        self.rate = {"up": 0.0, "down": 0.0}  # bytes per second per direction; 0 is unlimited
        self.traffic = {"up": 0, "down": 0}
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[_Pair] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def injected(self) -> int:
        return sum(f.fired for f in self.faults)

    def add(self, fault: Fault) -> None:
        with self._lock:
            fault.fire_at = self.traffic[fault.direction] + fault.after_bytes
            self.faults.append(fault)

    def when_sent(self, pattern: bytes, *, action: Callable[[], None] | None = None,
                  hold_reply: threading.Event | None = None) -> Watch:
        watch = Watch(re.compile(pattern, re.MULTILINE), action, hold_reply)
        with self._lock:
            self.watches.append(watch)
        return watch

    def _watched(self, data: bytes, pair: "_Pair") -> None:
        with self._lock:
            due = [w for w in self.watches if not w.fired and w.pattern.search(data)]
            for watch in due:
                watch.fired = True
                if watch.hold_reply is not None:
                    pair.hold_reply = watch.hold_reply
        for watch in due:
            if watch.action is not None:
                watch.action()

    def close(self) -> None:
        self._listener.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Reset every open connection, as a dead host's would be: bytes still in the proxy are lost."""
        with self._lock:
            pairs, self._open = self._open, []
        for pair in pairs:
            pair.reset()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()  # the target is down (a restarting master): refuse this one, keep serving
                continue
            self.connections += 1
            pair = _Pair(client, upstream)
            with self._lock:
                self._open.append(pair)
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pipe, args=(src, dst, direction, pair), daemon=True).start()

    def _due_fault(self, direction: str, size: int) -> tuple[Fault, int] | None:
        """Account ``size`` bytes; the fault that fires inside them and its position, if any."""
        with self._lock:
            start = self.traffic[direction]
            self.traffic[direction] += size
            for fault in self.faults:
                if fault.direction == direction and not fault.fired and start <= fault.fire_at < start + size:
                    fault.fired = True
                    return fault, fault.fire_at - start
        return None

    def _pipe(self, src, dst, direction: str, pair: "_Pair") -> None:
        try:
            while data := src.recv(1 << 14 if self.rate[direction] else 1 << 16):
                if self.rate[direction]:
                    time.sleep(len(data) / self.rate[direction])
                if direction == "up" and self.watches:
                    self._watched(data, pair)
                if direction == "down" and pair.hold_reply is not None:
                    pair.hold_reply.wait(60)
                due = self._due_fault(direction, len(data))
                if due is not None:
                    fault, at = due
                    if fault.action == "cut":
                        dst.sendall(data[:at])
                        break
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.end_one_direction()


class _Pair:
    """A proxied connection's two sockets. The first direction to end shuts both down (which wakes the
    other direction's recv); only the last one closes them, so no thread ever reads a closed socket's
    number after the kernel has handed it to a new connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.sockets = (client, upstream)
        self.hold_reply: threading.Event | None = None  # a Watch's: the answer waits for it
        self._running = 2
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Closed with RST (linger 0) once both directions end; shutting down reading wakes them now
        (a plain close() would not: a thread blocked in recv keeps the socket alive)."""
        for sock in self.sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def end_one_direction(self) -> None:
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in self.sockets:
                sock.close()
