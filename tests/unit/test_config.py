import subprocess
import sys
from pathlib import Path

import pytest

from converter_common.config_loader import ConfigError
from master.config import load_config as load_master
from worker.config import load_config as load_worker

BIN = Path(sys.executable).parent


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


class TestMasterConfig:
    def test_defaults(self):
        config = load_master(None)
        assert (config.server.port, config.server.timeout) == (8080, 2100)

    def test_values_are_read(self, tmp_path):
        config = load_master(write(tmp_path, "server: {port: 9000}\nstorage: {root: /srv/v}\n"))
        assert config.server.port == 9000 and str(config.storage.root) == "/srv/v"

    @pytest.mark.parametrize("text, key", [
        ("server: {prot: 1}", "server.prot"),
        ("server: {port: 70000}", "server.port"),
        ("server: {port: '80'}", "server.port"),
        ("jobs: {max_attempts: 0}", "jobs.max_attempts"),
        ("bogus: 1", "bogus"),
        ("profiles: [nope]", "profiles"),
        ("server: 5", "server"),
        ("server: {body_chunk_size: 100}", "server.body_chunk_size"),
        ("storage: {direct_io: 'yes'}", "storage.direct_io"),
    ])
    def test_bad_values_name_the_key(self, tmp_path, text, key):
        with pytest.raises(ConfigError) as info:
            load_master(write(tmp_path, text))
        assert info.value.key == key

    def test_config_is_frozen(self):
        with pytest.raises(Exception):
            load_master(None).server.port = 1


class TestWorkerConfig:
    def test_seed_storage_section(self, tmp_path):
        config = load_worker(write(tmp_path, """
storage:
  mount_path: /mnt/videos
  download_timeout: 1800
  upload_timeout: 1800
  cache_path: /tmp/cache
  chunk_size: 10485760
master: {url: "http://m:8080"}
worker: {id: w7, concurrency: 2}
"""))
        assert config.storage.chunk_size == 10485760 and config.worker.concurrency == 2

    @pytest.mark.parametrize("text, key", [
        ("master: {url: 'ftp://x'}", "master.url"),
        ("worker: {concurrency: 0}", "worker.concurrency"),
        ("storage: {chunk_size: 10}", "storage.chunk_size"),
        ("retry: {factor: 0.5}", "retry.factor"),
        ("storage: {cache_dir: /x}", "storage.cache_dir"),
    ])
    def test_bad_values_name_the_key(self, tmp_path, text, key):
        with pytest.raises(ConfigError) as info:
            load_worker(write(tmp_path, text))
        assert info.value.key == key


@pytest.mark.parametrize("script", ["converter-master", "converter-worker"])
def test_bad_config_exits_2_with_one_line(tmp_path, script):
    path = write(tmp_path, "nonsense_key: 1\n")
    result = subprocess.run([str(BIN / script), "--config", str(path), "--check-config"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nonsense_key" in result.stderr


@pytest.mark.parametrize("script", ["converter-master", "converter-worker"])
def test_check_config_accepts_good_config(tmp_path, script):
    result = subprocess.run([str(BIN / script), "--config", str(write(tmp_path, "{}\n")), "--check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_master(tmp_path / "missing.yaml")
