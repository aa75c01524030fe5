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


class TestUnits:
    def test_master_durations_as_the_seed_wrote_them(self, tmp_path):
        config = load_master(write(tmp_path, """
server: {timeout: 35m, max_upload_size: 64GiB, chunk_size: 4MiB}
jobs: {lease_seconds: 1h30m, retry_delay: 500ms, max_claim_wait: 30s, quarantine_seconds: 1d}
watch: {stable_seconds: 2h, interval: 10}
"""))
        assert config.server.timeout == 35 * 60
        assert (config.server.max_upload_size, config.server.chunk_size) == (64 << 30, 4 << 20)
        assert (config.jobs.lease_seconds, config.jobs.retry_delay, config.jobs.max_claim_wait) == (5400, 0.5, 30)
        assert (config.jobs.quarantine_seconds, config.watch.stable_seconds, config.watch.interval) == (86400, 7200, 10)

    def test_worker_durations_as_the_seed_wrote_them(self, tmp_path):
        config = load_worker(write(tmp_path, """
storage: {download_timeout: 30m, upload_timeout: 1h, chunk_size: 1MiB}
worker: {heartbeat_interval: 10s, drain_timeout: 5m, claim_wait: 20}
retry: {base_delay: 500ms, cap: 1m30s}
ffmpeg: {timeout: 6h, stall_timeout: 3m, kill_grace: 5s}
"""))
        assert (config.storage.download_timeout, config.storage.upload_timeout) == (1800, 3600)
        assert config.storage.chunk_size == 1 << 20
        assert (config.worker.heartbeat_interval, config.worker.drain_timeout, config.worker.claim_wait) == (10, 300, 20)
        assert (config.retry.base_delay, config.retry.cap) == (0.5, 90)
        assert (config.ffmpeg.timeout, config.ffmpeg.stall_timeout, config.ffmpeg.kill_grace) == (21600, 180, 5)

    @pytest.mark.parametrize("value", ["30x", "30M", "m", "1h1h", "30m1h", "''"])
    def test_unknown_unit_is_a_clear_error(self, tmp_path, value):
        with pytest.raises(ConfigError) as info:
            load_master(write(tmp_path, f"jobs: {{lease_seconds: {value}}}\n"))
        assert info.value.key == "jobs.lease_seconds"
        assert "is not a duration (use seconds or a number with ms, s, m, h, d: 30m, 1h30m)" in str(info.value)

    def test_bad_size_names_the_key_and_units(self, tmp_path):
        with pytest.raises(ConfigError, match=r"server.chunk_size: '4MB' is not a size .*KiB, MiB, GiB"):
            load_master(write(tmp_path, "server: {chunk_size: 4MB}\n"))


class TestEveryProblemAtOnce:
    def test_master_three_bad_keys_in_one_error(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            load_master(write(tmp_path, "server: {port: 70000, timeout: 35x}\nbogus: 1\njobs: {max_attempts: 0}\n"))
        lines = str(info.value).splitlines()
        assert [key for key, _ in info.value.problems] == ["bogus", "server.timeout", "server.port",
                                                           "jobs.max_attempts"]
        assert len(lines) == 4 and all(line.startswith("config error: ") for line in lines)
        assert lines[0].startswith("config error: bogus: unknown key")
        assert info.value.key == "bogus"

    def test_worker_three_bad_keys_in_one_error(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            load_worker(write(tmp_path, "master: {url: 'ftp://x'}\nworker: {concurrency: 0}\n"
                                        "storage: {download_timeout: 30x, cache_dir: /x}\n"))
        assert {key for key, _ in info.value.problems} == {"master.url", "worker.concurrency",
                                                          "storage.download_timeout", "storage.cache_dir"}
        assert str(info.value).count("\n") == 3

    @pytest.mark.parametrize("script, section", [("converter-master", "jobs: {lease_seconds: 1x}"),
                                                 ("converter-worker", "retry: {cap: 1x}")])
    def test_check_config_prints_every_problem_and_exits_2(self, tmp_path, script, section):
        path = write(tmp_path, f"nonsense_key: 1\nother_key: 2\n{section}\n")
        result = subprocess.run([str(BIN / script), "--config", str(path), "--check-config"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 3 and "nonsense_key" in lines[0] and "other_key" in lines[1]
        assert all(line.startswith("config error: ") for line in lines)
        assert "'1x' is not a duration (use seconds" in lines[2]
