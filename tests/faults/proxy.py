"""A TCP proxy that injects faults between a worker and the master (the only fake we allow: a fault)."""

from __future__ import annotations

import socket
import threading
import time
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


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.faults: list[Fault] = []
        self.rate = {"up": 0.0, "down": 0.0}  # bytes per second per direction; 0 is unlimited
        self.traffic = {"up": 0, "down": 0}
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
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

    def close(self) -> None:
        self._listener.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Reset every open connection, as a dead host's would be: bytes still in the proxy are lost."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
            except OSError:
                pass

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
            with self._lock:
                self._open += [client, upstream]
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pipe, args=(src, dst, direction, client, upstream), daemon=True).start()

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

    def _pipe(self, src, dst, direction: str, *both) -> None:
        try:
            while data := src.recv(1 << 14 if self.rate[direction] else 1 << 16):
                if self.rate[direction]:
                    time.sleep(len(data) / self.rate[direction])
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
            for sock in both:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
