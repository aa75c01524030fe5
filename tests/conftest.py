from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fixtures import ThreadedMaster, make_clip, master_config

_fault_results: list[tuple[str, str, float]] = []  # the fault suite's summary (here: xdist's controller loads this file)


@pytest.fixture
def master(tmp_path):
    """A real master on a loopback port, with its own SQLite file and storage root under tmp_path."""
    running = ThreadedMaster(master_config(tmp_path))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def clip_2s(tmp_path_factory):
    """A 2-second 1080p H.264/AAC clip, made once per test session."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0)


def pytest_runtest_logreport(report):
    if report.when == "call" and "tests/faults/" in report.nodeid:
        name = report.nodeid.split("::", 1)[1]
        _fault_results.append((name, report.outcome, report.duration))


def pytest_terminal_summary(terminalreporter):
    if not _fault_results:
        return
    terminalreporter.section("fault-injection summary")
    width = max(len(name) for name, _, _ in _fault_results)
    terminalreporter.write_line(f"| {'case'.ljust(width)} | result | seconds |")
    terminalreporter.write_line(f"|{'-' * (width + 2)}|--------|---------|")
    for name, outcome, seconds in _fault_results:
        terminalreporter.write_line(f"| {name.ljust(width)} | {outcome:<6} | {seconds:7.1f} |")


# One SeaweedFS for the whole test session: with xdist the controller starts it before the test processes and
# hands them its address in the environment (they inherit it); a run without xdist starts it on first use.
# PostgreSQL the same way (its port in CONVERTER_TEST_PG); each test makes a database of its own.
S3_ENV = "CONVERTER_TEST_S3"
PG_ENV = "CONVERTER_TEST_PG"
_controller_servers: list = []


def pytest_configure(config):
    if hasattr(config, "workerinput") or os.environ.get(S3_ENV) or not getattr(config.option, "numprocesses", None):
        return
    from tests.postgres import PostgreSQL
    from tests.seaweedfs import SeaweedFS

    s3 = SeaweedFS(Path(tempfile.mkdtemp(prefix="converter-test-s3-"))).start()
    _controller_servers.append(s3)
    os.environ[S3_ENV] = s3.endpoint
    postgres = PostgreSQL(Path(tempfile.mkdtemp(prefix="converter-test-pg-"))).start()
    _controller_servers.append(postgres)
    os.environ[PG_ENV] = str(postgres.port)


def pytest_unconfigure(config):
    for server in _controller_servers:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    _controller_servers.clear()
    os.environ.pop(S3_ENV, None)
    os.environ.pop(PG_ENV, None)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 15 (initdb + pg_ctl in a temp dir), shared by the session: ``postgres.new_database()``
    gives each test an empty database of its own."""
    from tests.postgres import PostgreSQL

    if os.environ.get(PG_ENV):
        yield PostgreSQL.running_at(int(os.environ[PG_ENV]))
        return
    server = PostgreSQL(Path(tempfile.mkdtemp(prefix="converter-test-pg-"))).start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> str:
    """Where a store keeps its tables, on each backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(database):
    """The job store on each backend: SQLite, then PostgreSQL (the same tests, the same statements)."""
    from master.store import JobStore

    s = JobStore(database)
    yield s
    s.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS) with one bucket, shared by the whole session: give each test its own key
    prefix (``seaweedfs.prefix()``). A test that stops the server starts one of its own (``SeaweedFS(...)``)."""
    from tests.seaweedfs import SeaweedFS

    if os.environ.get(S3_ENV):
        yield SeaweedFS.running_at(os.environ[S3_ENV])
        return
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()
