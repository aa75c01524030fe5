"""The notify protocol, checked by binding the datagram socket systemd would listen on."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from converter_common.systemd import Notifier, ascii_status
from tests.fixtures import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)  # a worker is READY after its FFmpeg probe and registration: seconds, more on a loaded CI
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive(sock, until: str, limit: int = 200) -> list[str]:
    messages = []
    for _ in range(limit):
        message = sock.recv(4096).decode("latin-1")
        messages.append(message)
        if until in message:
            return messages
    raise AssertionError(f"{until!r} never came: {messages}")


def test_messages_reach_the_socket(notify_socket):
    notifier = Notifier()
    notifier.ready("pending=0")
    notifier.watchdog()
    notifier.status("job é 50%")
    notifier.stopping()
    assert [notify_socket.recv(4096).decode() for _ in range(4)] == [
        "READY=1\nSTATUS=pending=0", "WATCHDOG=1", "STATUS=job ? 50%", "STOPPING=1"]


def test_no_socket_means_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    notifier.ready()
    assert not notifier.enabled


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier().watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog_interval() is None


def test_status_is_printable_ascii_and_bounded():
    assert ascii_status("a\nb\u00e9" + "x" * 500) == "a?b?" + "x" * 196


@pytest.mark.integration
@pytest.mark.parametrize("script", ["converter-master", "converter-worker"])
def test_daemon_sends_ready_watchdog_then_stopping(tmp_path, notify_socket, script):
    port = free_port()
    master_cfg = tmp_path / "master.yaml"
    master_cfg.write_text(yaml.safe_dump({"server": {"port": port}, "storage": {"root": str(tmp_path / "s")},
                                          "database": {"path": str(tmp_path / "db")}}))
    env = {**os.environ, "WATCHDOG_USEC": "200000"}
    processes = []
    try:
        if script == "converter-worker":
            env_master = {k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            processes.append(subprocess.Popen([str(BIN / "converter-master"), "--config", str(master_cfg)],
                                              env=env_master, stderr=subprocess.DEVNULL))
            config = tmp_path / "worker.yaml"
            config.write_text(yaml.safe_dump({"master": {"url": f"http://127.0.0.1:{port}"},
                                              "worker": {"claim_wait": 1, "metrics_port": 0},
                                              "storage": {"cache_path": str(tmp_path / "cache")}}))
        else:
            config = master_cfg
        daemon = subprocess.Popen([str(BIN / script), "--config", str(config)], env=env, stderr=subprocess.DEVNULL)
        processes.append(daemon)
        messages = receive(notify_socket, "READY=1")
        assert messages[-1].startswith("READY=1")
        assert receive(notify_socket, "WATCHDOG=1")
        daemon.send_signal(signal.SIGTERM)
        assert receive(notify_socket, "STOPPING=1")
        assert daemon.wait(30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
