"""Dashboards, alert rules and docs/observability.md, checked by promtool, a lint and a real Prometheus.

The big test starts Debian's ``prometheus`` on a free loopback port, scraping (every second) a live master and two
live workers while they run jobs (one corrupt source fails; one download per worker is cut by a TCP proxy and
retried), then evaluates every panel query and every variable query of every dashboard through the HTTP API.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures import Process, free_port, make_clip, wait_for, write_yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
ALERTS = GRAFANA / "prometheus" / "alerts.yml"
DOC = ROOT / "docs" / "observability.md"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package prometheus)")
needs_prometheus = pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK),
                                      reason="prometheus missing (Debian package prometheus)")

SCHEMA_VERSION_MIN = 39
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def load_generator():
    spec = importlib.util.spec_from_file_location("converter_grafana_generate", GRAFANA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' collapsed children included, rows themselves excluded."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def registered_names() -> set[str]:
    """Sample-name stems a fresh MasterMetrics/WorkerMetrics exposes, as PromQL sees them."""
    from prometheus_client import CollectorRegistry

    from master.metrics import MasterMetrics
    from master.store import JobStore
    from worker.metrics import WorkerMetrics

    names = set()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "names.db")
        try:
            master_registry, worker_registry = CollectorRegistry(), CollectorRegistry()
            MasterMetrics(master_registry, store, Path(tmp), online_window=lambda: 60.0)
            WorkerMetrics(worker_registry).watch_cache(Path(tmp))
            for registry in (master_registry, worker_registry):
                for family in registry.collect():
                    names.add(family.name + {"counter": "_total", "info": "_info"}.get(family.type, ""))
        finally:
            store.close()
    return names


# -- PromQL, just enough to lint our own expressions ---------------------------------------------------------------

SELECTOR = re.compile(r'([A-Za-z_:][\w:]*)?\{((?:[^{}"]|"[^"]*")*)\}(\s*\[[^\]]*\])?')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
RANGE = re.compile(r"\[([^\]]*)\]")
COUNTER_LIKE = re.compile(r"_(total|count|sum|bucket)$")


def lint_expr(expr: str) -> list[str]:
    problems = []
    for match in SELECTOR.finditer(expr):
        name, matchers, window = match.group(1), match.group(2).replace(" ", ""), match.group(3)
        if 'job=~"$job"' not in matchers or 'instance=~"$instance"' not in matchers:
            problems.append(f"selector {match.group(0)!r} lacks job=~\"$job\" and instance=~\"$instance\"")
        if name and COUNTER_LIKE.search(name) and not window:
            problems.append(f"counter {name} used without rate()/increase() and a range")
    rest = GROUPING.sub(" ", SELECTOR.sub(" SELECTOR ", expr))
    for match in IDENTIFIER.finditer(rest):
        word = match.group(0)
        if word == "SELECTOR" or word in KEYWORDS or rest[match.end():].lstrip().startswith("("):
            continue
        problems.append(f"bare selector {word!r} (no job/instance filter)")
    for window in RANGE.findall(expr):
        if window != "$__rate_interval":
            problems.append(f"range [{window}] is not [$__rate_interval]")
    if expr.count("(") != expr.count(")"):
        problems.append("unbalanced parentheses")
    return problems


def metric_names(expr: str) -> set[str]:
    return {m.group(1) for m in SELECTOR.finditer(expr) if m.group(1)}


# -- promtool -------------------------------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)


@needs_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_example_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert alerts - tested == set(), "alerts without a firing unit test"


# -- dashboard lint ---------------------------------------------------------------------------------------------------


def test_dashboards_exist_with_fixed_unique_uids():
    boards = dashboards()
    assert {"converter-overview.json", "converter-workers.json"} <= set(boards)
    uids = [b["uid"] for b in boards.values()]
    titles = [b["title"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for name, board in boards.items():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]), name
        assert board["id"] is None, f"{name}: id must be null so Grafana assigns one"
        assert board["schemaVersion"] >= SCHEMA_VERSION_MIN, name
        assert board["tags"], name


@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_dashboard_lint(name):
    board = dashboards()[name]
    problems = []
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var_name in ("job", "instance"):
        var = variables[var_name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE_REF, var_name
        assert re.fullmatch(rf"label_values\(.+, {var_name}\)", variable_query(var)), var_name
        assert var["refresh"] == 2, f"{var_name} must refresh on time-range change"
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".+", var_name
    assert "$job" in variable_query(variables["instance"]), "instance must be chained to job"

    ids = [p["id"] for p in board["panels"]] + [c["id"] for p in board["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        where = f"{name}: panel {panel.get('title')!r}"
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{where}: needs a title and a description")
        if panel.get("datasource") != DATASOURCE_REF:
            problems.append(f"{where}: datasource must be {DATASOURCE_REF}")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
        if not panel.get("targets"):
            problems.append(f"{where}: no targets")
        refs = [t["refId"] for t in panel.get("targets", [])]
        if len(refs) != len(set(refs)):
            problems.append(f"{where}: duplicate refIds")
        for target in panel.get("targets", []):
            if target.get("datasource") != DATASOURCE_REF:
                problems.append(f"{where} {target['refId']}: datasource must be {DATASOURCE_REF}")
            problems += [f"{where} {target['refId']}: {p}" for p in lint_expr(target.get("expr", ""))]
    assert problems == []


def test_lint_catches_bad_queries():
    """The lint itself: each of these must be flagged."""
    good = 'sum(rate(x_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))'
    assert lint_expr(good) == []
    assert lint_expr('sum(rate(x_total{job=~"$job"}[$__rate_interval]))')
    assert lint_expr('sum(rate(x_total{job=~"$job", instance=~"$instance"}[5m]))')
    assert lint_expr('sum(x_total{job=~"$job", instance=~"$instance"})')
    assert lint_expr(good + " / sum(up)")
    assert lint_expr("sum(rate(x_total{job=~\"$job\", instance=~\"$instance\"}[$__rate_interval])")


def test_dashboards_and_alerts_use_only_existing_metrics():
    known = registered_names() | {"up"}
    stems = set()
    for board in dashboards().values():
        exprs = [t["expr"] for p in panels(board) for t in p["targets"]]
        exprs += [variable_query(v) for v in board["templating"]["list"] if v["type"] == "query"]
        for expr in exprs:
            stems |= metric_names(expr)
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            stems |= {m for m in re.findall(r"([a-z_:][\w:]*)\{", rule["expr"])}
    unknown = {s for s in stems if s not in known and re.sub(r"_(bucket|count|sum)$", "", s) not in known}
    assert unknown == set()


# -- the doc ----------------------------------------------------------------------------------------------------------


def test_generated_files_are_current():
    stale = [str(path.relative_to(ROOT)) for path, text in load_generator().outputs().items()
             if not path.exists() or path.read_text() != text]
    assert stale == [], "stale; run: .venv/bin/python grafana/generate.py"


def test_doc_lists_every_metric_panel_and_alert():
    doc = DOC.read_text()
    documented = set(re.findall(r"^\| `(converter_\w+)` \| (?:counter|gauge|histogram|info|summary) \|", doc, re.M))
    assert documented == registered_names()
    for board in dashboards().values():
        assert f"uid `{board['uid']}`" in doc
        for panel in panels(board):
            assert f"**{panel['title']}**" in doc, panel["title"]
            for target in panel["targets"]:
                assert " ".join(target["expr"].split()).replace("|", "\\|") in doc, target["expr"]
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert f"| `{rule['alert']}` |" in doc


# -- a real Prometheus ------------------------------------------------------------------------------------------------


class DropFirstDownload:
    """A TCP proxy to the master that cuts the connection carrying the first download request: one injected retry."""

    MARK = b"/api/worker/download-video"

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        try:
            while data := src.recv(65536):
                if inspect and self.MARK in data:
                    with self._lock:
                        drop, self.dropped = self.dropped == 0, self.dropped + (self.dropped == 0)
                    if drop:
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass


def start_worker(cluster, worker_id: str, master_url: str) -> Process:
    metrics_port = free_port()
    cfg = write_yaml(cluster.tmp / f"{worker_id}.yaml", {
        "master": {"url": master_url},
        "worker": {"id": worker_id, "claim_wait": 2, "heartbeat_interval": 1, "concurrency": 1,
                   "metrics_host": "127.0.0.1", "metrics_port": metrics_port},
        "storage": {"cache_path": str(cluster.tmp / f"cache-{worker_id}")},
        "retry": {"attempts": 3, "base_delay": 0.05, "factor": 2, "cap": 0.5},
        "ffmpeg": {"binary": "ffmpeg", "timeout": 120},
    })
    process = Process("converter-worker", cfg, cluster.tmp / f"{worker_id}.log")
    process.target = f"127.0.0.1:{metrics_port}"
    return process


class Prometheus:
    def __init__(self, tmp: Path, master: str, workers: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = write_yaml(tmp / "prometheus.yml", {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "converter-master", "static_configs": [{"targets": [master]}]},
                {"job_name": "converter-worker", "static_configs": [{"targets": workers}]},
            ],
        })
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.popen.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).ok
        except requests.ConnectionError:
            return False

    def api(self, path: str, **params) -> dict:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert response.ok and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def scrape_counts(self) -> dict[str, int]:
        """Scrapes so far, by target (retention is 1 h, longer than any test)."""
        return {r["metric"]["instance"]: int(r["value"][1]) for r in self.query("count_over_time(up[1h])")}

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def substitute(text: str, job: str = ".+", instance: str = ".+") -> str:
    return (text.replace("$__rate_interval", "1m").replace("${datasource}", "")
            .replace("$job", job).replace("$instance", instance))


def evaluate_variable(prom: Prometheus, query: str, **subst) -> list[str]:
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    selector, label = substitute(match.group(1), **subst), match.group(2)
    return prom.api(f"label/{urllib.parse.quote(label)}/values", **{"match[]": selector, "start": time.time() - 600})


@pytest.fixture
def prometheus_cluster(cluster):
    """A master, two workers behind retry-injecting proxies, and a Prometheus scraping all three every second."""
    master_port = urllib.parse.urlsplit(cluster.url).port
    proxies = [DropFirstDownload(master_port) for _ in range(2)]
    workers = [start_worker(cluster, f"w{i + 1}", f"http://127.0.0.1:{p.port}") for i, p in enumerate(proxies)]
    prom = Prometheus(cluster.tmp, f"127.0.0.1:{master_port}", [w.target for w in workers])
    try:
        yield cluster, prom, proxies, workers
    finally:
        prom.stop()
        for worker in workers:
            worker.stop()
        for proxy in proxies:
            proxy.close()


@needs_prometheus
@pytest.mark.timeout(150)
def test_every_dashboard_query_returns_series_from_a_live_cluster(prometheus_cluster):
    cluster, prom, proxies, workers = prometheus_cluster
    started = time.monotonic()
    # 720p, 3 s (~2.4 MB): more than the skip rule's 2 MiB head, so each download is the head's ranged GET then the
    # rest from where it stopped, and the byte counts below prove every byte counted once; and not upscaled by
    # h264-720p, so the output comes out smaller and is uploaded (an upscaled 320x240 clip's output is larger, and
    # discard_larger, which now holds for upscales too, would keep the source instead of uploading it)
    sources = {"a": make_clip(cluster.root / "in" / "a.mp4", seconds=3.0, size="1280x720"),
               "b": make_clip(cluster.root / "in" / "b.mp4", seconds=3.0, size="1280x720"),
               "bad": cluster.root / "in" / "bad.mp4"}
    sources["bad"].write_bytes(b"this is not a video\n" * 500)  # ffprobe fails: the job fails for good
    wait_for(prom.ready, 20, 0.2, "prometheus to be ready")
    wait_for(lambda: prom.query('sum(up) == 3'), 20, 0.5, "prometheus to scrape master and both workers")

    for name, source in sources.items():
        cluster.submit(f"in/{source.name}", f"out/{name}.mp4", name)
    jobs = {name: cluster.wait_status(name, "completed", "failed", timeout=60) for name in sources}
    assert [jobs[n]["status"] for n in ("a", "b", "bad")] == ["completed", "completed", "failed"], jobs
    assert not jobs["a"]["kept_source"] and not jobs["b"]["kept_source"], jobs  # converted outputs, uploaded
    assert sum(p.dropped for p in proxies) >= 1, "no download went through a proxy"

    # Prometheus has the final state once the workers' counters show all three jobs (scraped every second).
    wait_for(lambda: prom.query("sum(converter_worker_jobs_finished_total) == 3")
             and prom.query('sum(converter_master_jobs{status=~"completed|failed"}) == 3'), 20, 0.5,
             "prometheus to scrape the final counters")
    # Two more scrapes of every target, so every rate() has a sample pair with the final values.
    scrapes = prom.scrape_counts()
    wait_for(lambda: all(n >= scrapes[target] + 2 for target, n in prom.scrape_counts().items()), 20, 0.2,
             "two more scrapes of every target")

    # Every variable and every panel query, with the variables substituted, returns series; none leaks past
    # a job or instance filter that matches nothing.
    empty, leaking, evaluated = [], [], 0
    for file_name, board in dashboards().items():
        for var in board["templating"]["list"]:
            if var["type"] != "query":
                continue
            values = evaluate_variable(prom, variable_query(var))
            evaluated += 1
            if not values:
                empty.append(f"{file_name} variable {var['name']}: {variable_query(var)}")
            if evaluate_variable(prom, variable_query(var), job="no-such-job") and "$job" in variable_query(var):
                leaking.append(f"{file_name} variable {var['name']}")
        for panel in panels(board):
            for target in panel["targets"]:
                where = f"{file_name} / {panel['title']} / {target['refId']}: {substitute(target['expr'])}"
                evaluated += 1
                if not prom.query(substitute(target["expr"])):
                    empty.append(where)
                if prom.query(substitute(target["expr"], job="no-such-job")) or prom.query(
                        substitute(target["expr"], instance="no-such-instance")):
                    leaking.append(where)
    assert empty == [], "queries without series"
    assert leaking == [], "queries not restricted by $job/$instance"
    assert evaluated >= 40

    # The variables list what runs.
    workers_board = dashboards()["converter-workers.json"]
    instance_var = next(v for v in workers_board["templating"]["list"] if v["name"] == "instance")
    assert sorted(evaluate_variable(prom, variable_query(instance_var))) == sorted(w.target for w in workers)

    # A panel query exactly as the dashboard has it shows the activity.
    per_minute = next(p for p in panels(dashboards()["converter-overview.json"]) if p["title"] == "Jobs per minute")
    completed = next(t for t in per_minute["targets"] if t["legendFormat"] == "completed")
    assert float(prom.query(substitute(completed["expr"]))[0]["value"][1]) > 0

    # Values where they are known.
    source_bytes = sum(path.stat().st_size for path in sources.values())
    output_bytes = sum(jobs[n]["output_size"] for n in ("a", "b"))
    assert prom.value('sum(converter_worker_transfer_bytes_total{direction="download"})') == source_bytes
    assert prom.value('sum(converter_worker_transfer_bytes_total{direction="upload"})') == output_bytes
    assert prom.value("sum(converter_master_bytes_served_total)") == source_bytes
    assert prom.value('sum(converter_worker_transfer_retries_total{direction="download"})') == sum(
        p.dropped for p in proxies)
    assert prom.value('sum(converter_worker_transfer_retries_total{direction="upload"})') == 0
    assert prom.value("sum(converter_worker_transfer_failures_total)") == 0
    by_accel = {r["metric"]["accel"]: float(r["value"][1]) for r in
                prom.query("sum by (accel) (converter_worker_conversion_duration_seconds_count)")}
    assert by_accel == {"cpu": 2.0, "vulkan": 0.0}  # both series exist from start-up; no Vulkan here
    assert prom.value('sum(converter_worker_jobs_finished_total{outcome="completed"})') == 2
    assert prom.value('sum(converter_worker_jobs_finished_total{outcome="failed"})') == 1
    assert prom.value("converter_master_jobs_submitted_total") == 3
    assert prom.value("converter_master_jobs_completed_total") == 2
    assert prom.value("converter_master_jobs_failed_total") == 1
    assert prom.value('converter_master_jobs{status="completed"}') == 2
    assert prom.value('converter_master_jobs{status="failed"}') == 1
    assert prom.value("converter_master_job_duration_seconds_count") == 2
    assert prom.value("converter_master_workers_active") == 2
    assert prom.value('sum(up{job="converter-worker"})') == 2
    assert prom.value("sum(converter_worker_jobs_in_progress)") == 0

    # The alert rules load and evaluate without errors against real series.
    def rules_evaluated():
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for(rules_evaluated, 10, 0.5, "the alert rules to be evaluated")
    assert {r["name"] for r in rules} == {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                                          for r in g["rules"]}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert time.monotonic() - started < 120
