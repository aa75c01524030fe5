"""A real HAProxy (Debian's ``haproxy``) in front of several masters, for the tests: loopback, a port of its
own, ``/healthz`` checks every 200 ms, the timeouts a long-polling claim and a long transfer need."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import requests

from tests.fixtures import free_port, wait_for

CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    option redispatch
    retries 2
frontend converter
    bind 127.0.0.1:{port}
    default_backend masters
backend masters
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fall 2 rise 1
{servers}
"""


class HAProxy:
    def __init__(self, workdir: Path, backends: list[int]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server master{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(CONFIG.format(port=self.port, servers=servers))
        self._proc: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        subprocess.run([binary, "-c", "-q", "-f", str(self.config)], check=True, timeout=30)
        self._log = open(self.workdir / "haproxy.log", "wb")
        self._proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=self._log,
                                      stderr=subprocess.STDOUT)
        wait_for(self._up, 20, 0.1, "HAProxy to route to a healthy master")
        return self

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log.close()
            self._proc = None
