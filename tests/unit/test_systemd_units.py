"""The shipped systemd units: `systemd-analyze verify` passes and the offline security exposure stays low.

`verify` refuses a unit whose ExecStart binary does not exist, and the venv under /opt/converter is not on a test
host, so it checks a copy in a temp dir with only the ExecStart binary swapped for one that exists; the rest of the
unit (every key, the arguments) is verified as shipped. `security --offline=yes` needs no PID 1 systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
MAX_EXPOSURE = {"converter-master.service": 2.0, "converter-worker.service": 2.5}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _unit(name: str) -> str:
    return (UNIT_DIR / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_verify_passes(name: str, tmp_path: Path) -> None:
    text = _unit(name)
    true_bin = shutil.which("true")
    assert true_bin, "no `true` binary on PATH"
    exec_lines = re.findall(r"^ExecStart=(\S+)", text, flags=re.M)
    assert len(exec_lines) == 1 and exec_lines[0].startswith("/opt/converter/venv/bin/"), exec_lines
    copy = tmp_path / name  # verify needs the real file name (the suffix picks the unit type)
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={true_bin}", text, flags=re.M), encoding="utf-8")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--recursive-errors=no", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"systemd-analyze verify {name} failed:\n{result.stdout}{result.stderr}"
    # Warnings about our own unit (unknown keys, bad values) are errors for us even where verify exits 0.
    own = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert not own, "\n".join(own)


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_security_exposure(name: str) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT_DIR / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure level in systemd-analyze output:\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE[name], f"{name}: exposure {exposure} > {MAX_EXPOSURE[name]}\n{output}"


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_required_directives(name: str) -> None:
    d = _directives(_unit(name))
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d.get("WatchdogSec"), "WatchdogSec missing"
    assert d["Restart"] == ["on-failure"]
    # Neither daemon handles SIGHUP: an ExecReload sending it would stop the service (a "clean" signal, so
    # Restart=on-failure leaves it down). Without ExecReload, `systemctl reload` is refused and nothing stops.
    assert "ExecReload" not in d, "no ExecReload until the daemon really reloads on SIGHUP"
    assert d.get("StartLimitIntervalSec") and d.get("StartLimitBurst")
    assert d["User"] == ["converter"] and d["DynamicUser"] == ["no"]
    assert d["ConfigurationDirectory"] == ["converter"]
    assert "worker-token:/etc/converter/worker-token" in d["LoadCredential"]
    assert all(c.split(":", 1)[1].startswith("/etc/converter/") for c in d["LoadCredential"])
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictRealtime",
                "RestrictSUIDSGID", "LockPersonality", "RemoveIPC", "RestrictNamespaces"):
        assert d.get(key) == ["yes"], f"{key} must be yes"
    assert d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""]
    assert "@system-service" in d["SystemCallFilter"]


def test_master_specifics() -> None:
    d = _directives(_unit("converter-master.service"))
    assert d["StateDirectory"] == ["converter"]
    assert d["PrivateDevices"] == ["yes"] and d["PrivateUsers"] == ["yes"]
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    assert d["LoadCredential"] == ["admin-token:/etc/converter/admin-token", "worker-token:/etc/converter/worker-token"]


def test_worker_keeps_gpu_and_drains() -> None:
    d = _directives(_unit("converter-worker.service"))
    assert d["CacheDirectory"] == ["converter-worker"]
    assert d["PrivateDevices"] == ["no"]
    assert d["LoadCredential"] == ["worker-token:/etc/converter/worker-token"]  # never the admin token
    assert d["DeviceAllow"] == ["char-drm rw"]
    assert d["SupplementaryGroups"] == ["render video"]
    assert "PrivateUsers" not in d
    assert not any("@resources" in f for f in d["SystemCallFilter"]), "the worker needs nice/setrlimit (@resources)"
    stop = d["TimeoutStopSec"][0]
    assert stop.endswith("s") and int(stop[:-1]) >= 60, f"TimeoutStopSec={stop} leaves no time to drain"
