"""systemd's notify protocol (READY, WATCHDOG, STATUS, STOPPING) through the ``sdnotify`` package.

A no-op when ``NOTIFY_SOCKET`` is unset. sdnotify encodes Latin-1 and drops errors silently, so
STATUS text is reduced to printable ASCII here and the socket is connected once, up front.
"""

from __future__ import annotations

import os
import re

import sdnotify

_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        if self._notifier is not None and self._notifier.socket is not None:
            # A reader that stops reading (a full queue) must never block the daemon: drop the message instead.
            self._notifier.socket.setblocking(False)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={ascii_status(status)}" if status else ""))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={ascii_status(text)}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds when systemd expects pings from this process, else None."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        return int(usec) / 1e6 / 2

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)


def ascii_status(text: str) -> str:
    return _NOT_PRINTABLE_ASCII.sub("?", text)[:200]
