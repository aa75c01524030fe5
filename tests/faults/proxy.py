"""A TCP proxy that injects faults between a worker and the master (the only fake we allow: a fault)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """What to do to the next ``times`` connections: cut or corrupt after N bytes in one direction."""

    direction: str  # "down" (master → worker) or "up" (worker → master)
    after_bytes: int
    action: str = "cut"  # or "flip": invert one byte, once, and carry on
    times: int = 1


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.faults: list[Fault] = []
        self.connections = 0
        self.injected = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def close(self) -> None:
        self._listener.close()

    def _take_fault(self) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            fault = self._take_fault()
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                own = fault if fault is not None and fault.direction == direction else None
                threading.Thread(target=self._pipe, args=(src, dst, own, client, upstream), daemon=True).start()

    def _pipe(self, src, dst, fault: Fault | None, *both) -> None:
        sent = 0
        try:
            while data := src.recv(1 << 16):
                if fault is not None and sent + len(data) > fault.after_bytes:
                    cut_at = fault.after_bytes - sent
                    if fault.action == "cut":
                        dst.sendall(data[:cut_at])
                        self.injected += 1
                        break
                    data = data[:cut_at] + bytes([data[cut_at] ^ 0xFF]) + data[cut_at + 1:]
                    self.injected += 1
                    fault = None
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in both:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
