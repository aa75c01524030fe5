#!/usr/bin/env python3
"""Write the Grafana dashboards and docs/observability.md from one description, so neither can drift.

    .venv/bin/python grafana/generate.py           # rewrite grafana/dashboards/*.json and docs/observability.md
    .venv/bin/python grafana/generate.py --check   # exit 1 when a written file differs from what would be generated

The metric tables come from fresh ``MasterMetrics``/``WorkerMetrics`` registries, the panel tables from the
dashboards below and the alert table from ``grafana/prometheus/alerts.yml``.
``tests/integration/test_observability.py`` runs the check, lints the dashboards and evaluates every query against a
real Prometheus scraping a live master and workers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
ALERTS = ROOT / "grafana" / "prometheus" / "alerts.yml"
DOC = ROOT / "docs" / "observability.md"

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every selector carries this filter; the lint test checks it selector by selector.
F = 'job=~"$job", instance=~"$instance"'
RI = "[$__rate_interval]"


# -- the dashboards ----------------------------------------------------------------------------------------------


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    targets: list[Target]
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    height: int = 8
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    title: str


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    tags: list[str]
    build_info: str  # the selector the job/instance variables list values from
    items: list  # Row | Panel

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


def quantiles(metric: str, by: str, legend: str, qs=(0.5, 0.95)) -> list[Target]:
    """p50/p95 of a classic histogram, aggregated across instances before the quantile is taken."""
    group = f"le, {by}" if by else "le"
    return [Target(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{F}}}{RI})))",
                   f"p{round(q * 100)}{' ' + legend if legend else ''}") for q in qs]


def per_minute(metric: str, by: str = "", legend: str = "", matchers: str = "") -> Target:
    selector = f"{metric}{{{matchers + ', ' if matchers else ''}{F}}}"
    agg = f"sum by ({by}) " if by else "sum "
    return Target(f"60 * {agg}(rate({selector}{RI}))", legend)


OVERVIEW = Dashboard(
    uid="converter-overview",
    title="Converter / Overview",
    description="The queue, job throughput, failures, workers and end-to-end durations, as seen by the master.",
    tags=["converter"],
    build_info='{__name__=~"converter_(master|worker)_build_info"}',
    items=[
        Row("Queue"),
        Panel("Pending jobs", "Jobs waiting for a worker (converter_master_jobs{status=\"pending\"}).", "short",
              [Target(f'sum(converter_master_jobs{{status="pending", {F}}})', "pending")], kind="stat", width=6),
        Panel("Processing jobs", "Jobs a worker holds a lease on.", "short",
              [Target(f'sum(converter_master_jobs{{status="processing", {F}}})', "processing")], kind="stat",
              width=6),
        Panel("Workers active", "Workers the master heard from within the online window (lease + claim wait).",
              "short", [Target(f"sum(converter_master_workers_active{{{F}}})", "active")], kind="stat", width=6),
        Panel("Jobs completed per minute", "Completed jobs per minute over the rate interval.", "cpm",
              [per_minute("converter_master_jobs_completed_total", legend="completed")], kind="stat", width=6),
        Panel("Queue by status", "Jobs in the master's SQLite queue by status, read at scrape time.", "short",
              [Target(f"sum by (status) (converter_master_jobs{{{F}}})", "{{status}}")]),
        Panel("Jobs per minute", "Jobs submitted, completed and failed per minute.", "cpm",
              [per_minute("converter_master_jobs_submitted_total", legend="submitted"),
               per_minute("converter_master_jobs_completed_total", legend="completed"),
               per_minute("converter_master_jobs_failed_total", legend="failed")]),
        Row("Queue control and space saved"),
        Panel("Queue paused", "1 while the whole queue is paused (POST /api/queue/pause): running jobs finish, no "
              "claim gets a job.", "bool_yes_no",
              [Target(f"max(converter_master_queue_paused{{{F}}})", "paused")], kind="stat", width=6),
        Panel("Workers not claiming", "Workers an operator paused, and workers outside their worker.schedule "
              "windows (as they last reported).", "short",
              [Target(f"max by (reason) (converter_master_workers_not_claiming{{{F}}})", "{{reason}}")],
              kind="stat", width=6),
        Panel("Space saved per hour by profile", "Source bytes minus output bytes of completed jobs whose output is "
              "smaller, per hour, by profile (GET /api/stats has the totals, larger outputs included).", "bytes",
              [Target(f"3600 * sum by (profile) (rate(converter_master_bytes_saved_total{{{F}}}{RI}))",
                      "{{profile}}")]),
        Panel("Webhook deliveries by status", "The webhooks' outbox (GET /api/webhooks/deliveries): deliveries "
              "pending, being sent, delivered, and failed after retrying for webhooks.retry_for.", "short",
              [Target(f"max by (status) (converter_master_webhook_deliveries{{{F}}})", "{{status}}")]),
        Row("Failures"),
        Panel("Failures and requeues per minute",
              "Jobs that ended failed, and jobs sent back to pending by reason (retryable failure, lease expired, "
              "released by a stopping worker).", "cpm",
              [per_minute("converter_master_jobs_failed_total", legend="failed"),
               per_minute("converter_master_jobs_requeued_total", by="reason", legend="requeued: {{reason}}")]),
        Panel("Failure ratio", "Failed / (failed + completed) over the rate interval; empty while no job ends.",
              "percentunit",
              [Target(f"sum(rate(converter_master_jobs_failed_total{{{F}}}{RI})) / (sum(rate("
                      f"converter_master_jobs_failed_total{{{F}}}{RI})) + sum(rate("
                      f"converter_master_jobs_completed_total{{{F}}}{RI})))", "failure ratio")],
              extra={"min": 0, "max": 1}),
        Panel("Health checks per minute by result", "Health checks (profile health-check) completed per minute: "
              "healthy, and unhealthy (FFmpeg reported decode errors; a result, not a failure).", "cpm",
              [per_minute("converter_master_health_checks_total", by="result", legend="{{result}}")]),
        Row("Workers"),
        Panel("Workers active and seen", "Workers seen within the online window, and all that ever registered.",
              "short", [Target(f"sum(converter_master_workers_active{{{F}}})", "active"),
                        Target(f"sum(converter_master_workers_seen{{{F}}})", "seen")]),
        Panel("Scrape targets up by job", "Targets Prometheus scraped successfully (up == 1), per job.", "short",
              [Target(f"sum by (job) (up{{{F}}})", "{{job}}")]),
        Row("Durations"),
        Panel("End-to-end job duration", "Submit to completed, p50 and p95 over the rate interval.", "s",
              quantiles("converter_master_job_duration_seconds", "", "")),
        Panel("Queue wait", "Submit to first claim, p50 and p95 over the rate interval.", "s",
              quantiles("converter_master_queue_wait_seconds", "", "")),
        Row("Master"),
        Panel("Master bytes served and received", "Source bytes sent to workers and upload bodies received.", "Bps",
              [Target(f"sum(rate(converter_master_bytes_served_total{{{F}}}{RI}))", "served (sources)"),
               Target(f"sum(rate(converter_master_bytes_received_total{{{F}}}{RI}))", "received (uploads)")],
              width=8),
        Panel("HTTP requests by handler", "Requests per second by Tornado handler class and status code.", "reqps",
              [Target(f"sum by (handler, code) (rate(converter_master_http_request_duration_seconds_count"
                      f"{{{F}}}{RI}))", "{{handler}} {{code}}")], width=8),
        Panel("HTTP p95 latency by handler", "95th percentile request duration by handler class.", "s",
              quantiles("converter_master_http_request_duration_seconds", "handler", "{{handler}}", qs=(0.95,)),
              width=8),
        Panel("Master storage free", "Free bytes on the filesystem of the master's storage root.", "bytes",
              [Target(f"min by (instance) (converter_master_storage_free_bytes{{{F}}})", "{{instance}}")]),
        Panel("Master version", "Running master versions (converter_master_build_info).", "short",
              [Target(f"count by (version) (converter_master_build_info{{{F}}})", "{{version}}")], kind="stat"),
        Panel("Claims per master", "Jobs each master handed to a worker per minute, and the NOTIFY wake-ups it heard "
              "(PostgreSQL: jobs another master made claimable).", "cpm",
              [per_minute("converter_master_jobs_claimed_total", by="instance", legend="claims {{instance}}"),
               per_minute("converter_master_job_notices_total", by="instance", legend="notices {{instance}}")]),
        Panel("Database connections", "Connections of each master to the queue's database, in use and idle, and "
              "statements waiting for one (PostgreSQL: its connection pool; SQLite: its one connection).", "short",
              [Target(f"sum by (instance, state) (converter_master_db_connections{{{F}}})", "{{state}} {{instance}}"),
               Target(f"sum by (instance) (converter_master_db_waiting{{{F}}})", "waiting {{instance}}")]),
        Panel("Database reachable", "1 while a master reaches the queue's database, 0 while it is away (it then "
              "answers 503 and /healthz reports not ready); reconnections per minute of its pool and of its NOTIFY "
              "listener.", "short",
              [Target(f"min by (instance) (converter_master_db_available{{{F}}})", "reachable {{instance}}"),
               per_minute("converter_master_db_reconnects_total", by="instance", legend="pool reconnects {{instance}}"),
               per_minute("converter_master_job_notices_reconnects_total", by="instance",
                          legend="listener reconnects {{instance}}")]),
        Row("Object storage"),
        Panel("Object store bytes", "Bytes to (upload) and from (download) the bucket: relayed by the master, and "
              "output parts workers sent straight to the store (counted when the master completes the upload).",
              "Bps", [Target(f"sum by (direction) (rate(converter_master_object_store_bytes_total{{{F}}}{RI}))",
                             "{{direction}}")], width=8),
        Panel("Presigned URLs issued", "Presigned URLs handed to workers and clients per minute, by operation.",
              "cpm", [per_minute("converter_master_presigned_urls_total", by="operation", legend="{{operation}}")],
              width=8),
        Panel("Object store errors", "Failed calls to the bucket per minute by operation, and abandoned multipart "
              "uploads aborted by the master.", "cpm",
              [per_minute("converter_master_object_store_errors_total", by="operation", legend="{{operation}}"),
               per_minute("converter_master_object_store_uploads_aborted_total", legend="uploads aborted")],
              width=8),
    ],
)

WORKERS = Dashboard(
    uid="converter-workers",
    title="Converter / Workers",
    description="Transfers, retries, conversions, Vulkan, cache and jobs of each worker.",
    tags=["converter"],
    build_info="converter_worker_build_info",
    items=[
        Row("Workers"),
        Panel("Workers up", "Worker targets Prometheus scraped successfully.", "short",
              [Target(f"sum(up{{{F}}})", "up")], kind="stat", width=6),
        Panel("Jobs in progress", "Jobs being processed by the selected workers now.", "short",
              [Target(f"sum(converter_worker_jobs_in_progress{{{F}}})", "in progress")], kind="stat", width=6),
        Panel("Workers with Vulkan", "Workers reporting a usable Vulkan device.", "short",
              [Target(f"sum(converter_worker_vulkan_available{{{F}}})", "vulkan")], kind="stat", width=6),
        Panel("Transfer retries per minute", "Retried transfer attempts per minute, both directions.", "cpm",
              [per_minute("converter_worker_transfer_retries_total", legend="retries")], kind="stat", width=6),
        Row("Transfers"),
        Panel("Transfer throughput by direction and worker",
              "Bytes per second moved from (download) and to (upload) the master.", "Bps",
              [Target(f"sum by (instance, direction) (rate(converter_worker_transfer_bytes_total{{{F}}}{RI}))",
                      "{{instance}} {{direction}}")]),
        Panel("Per-transfer throughput", "p50 and p95 of the throughput of single successful transfers.", "Bps",
              quantiles("converter_worker_transfer_throughput_bytes_per_second", "direction", "{{direction}}")),
        Panel("Transfer duration", "p50 and p95 wall time of successful transfers.", "s",
              quantiles("converter_worker_transfer_duration_seconds", "direction", "{{direction}}"), width=8),
        Panel("Transfer retries by direction and worker", "Transfer attempts retried, per minute.", "cpm",
              [per_minute("converter_worker_transfer_retries_total", by="instance, direction",
                          legend="{{instance}} {{direction}}")], width=8),
        Panel("Transfer failures by direction and worker", "Transfers given up after their last attempt, per minute.",
              "cpm", [per_minute("converter_worker_transfer_failures_total", by="instance, direction",
                                 legend="{{instance}} {{direction}}")], width=8),
        Row("Conversion"),
        Panel("Conversion time by accel and profile", "p50 and p95 FFmpeg wall time per conversion.", "s",
              quantiles("converter_worker_conversion_duration_seconds", "accel, profile", "{{accel}} {{profile}}")),
        Panel("Conversions per minute by accel and profile", "Finished FFmpeg conversions per minute.", "cpm",
              [per_minute("converter_worker_conversion_duration_seconds_count", by="accel, profile",
                          legend="{{accel}} {{profile}}")]),
        Panel("Conversion speed", "p50 media seconds converted per wall second (2x = twice real time).",
              "suffix:x", quantiles("converter_worker_conversion_speed_ratio", "accel, profile",
                                    "{{accel}} {{profile}}", qs=(0.5,)), width=8),
        Panel("Vulkan fallbacks per minute", "Vulkan conversions rerun on the CPU, per minute and worker.", "cpm",
              [per_minute("converter_worker_vulkan_fallbacks_total", by="instance", legend="{{instance}}")],
              width=8),
        Panel("Inside schedule", "1 while a worker may claim by its worker.schedule windows (1 without a "
              "schedule), 0 outside them.", "bool_yes_no",
              [Target(f"min by (instance) (converter_worker_schedule_open{{{F}}})", "{{instance}}")], width=8),
        Panel("Vulkan available", "1 when the worker has a usable Vulkan device.", "bool_yes_no",
              [Target(f"max by (instance) (converter_worker_vulkan_available{{{F}}})", "{{instance}}")], width=8),
        Row("Cache and jobs"),
        Panel("Cache size per worker", "Bytes in each worker's cache dir (sources and outputs of running jobs).",
              "bytes", [Target(f"sum by (instance) (converter_worker_cache_size_bytes{{{F}}})", "{{instance}}")],
              width=8),
        Panel("Cache free per worker", "Free bytes on the filesystem of each worker's cache.", "bytes",
              [Target(f"min by (instance) (converter_worker_cache_free_bytes{{{F}}})", "{{instance}}")], width=8),
        Panel("Jobs in progress per worker", "Jobs each worker is processing now.", "short",
              [Target(f"sum by (instance) (converter_worker_jobs_in_progress{{{F}}})", "{{instance}}")], width=8),
        Panel("Jobs finished per minute by outcome",
              "Jobs workers stopped working on: completed, skipped, failed, retried, released, lost.", "cpm",
              [per_minute("converter_worker_jobs_finished_total", by="outcome", legend="{{outcome}}")]),
        Panel("Worker versions", "Running worker versions (converter_worker_build_info).", "short",
              [Target(f"count by (version) (converter_worker_build_info{{{F}}})", "{{version}}")], kind="stat"),
    ],
)

ALL = [OVERVIEW, WORKERS]


def _variables(d: Dashboard) -> list[dict]:
    def query_var(name: str, label: str, selector: str) -> dict:
        query = f"label_values({selector}, {label})"
        return {
            "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".+", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "regex": "",
            "hide": 0,
        }

    instance_selector = (d.build_info[:-1] + ', job=~"$job"}' if d.build_info.endswith("}")
                         else d.build_info + '{job=~"$job"}')
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "options": [], "regex": "", "refresh": 1, "hide": 0, "includeAll": False, "multi": False},
        query_var("job", "job", d.build_info),
        query_var("instance", "instance", instance_selector),
    ]


def _panel_json(p: Panel, panel_id: int, x: int, y: int) -> dict:
    refs = "ABCDEFGH"
    defaults: dict = {"unit": p.unit, **p.extra}
    body = {
        "id": panel_id, "type": p.kind, "title": p.title, "description": p.description, "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"refId": refs[i], "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend,
                     "range": True, "instant": False, "editorMode": "code"} for i, t in enumerate(p.targets)],
    }
    if p.kind == "timeseries":
        defaults.setdefault("custom", {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                       "showPoints": "never", "spanNulls": False})
        body["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                           "orientation": "auto"}
    return body


def dashboard_json(d: Dashboard) -> dict:
    panels, panel_id, x, y, row_h = [], 1, 0, 0, 0
    for item in d.items:
        if isinstance(item, Row):
            if x:
                y, x = y + row_h, 0
            panels.append({"id": panel_id, "type": "row", "title": item.title, "collapsed": False, "panels": [],
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            y, row_h = y + 1, 0
        else:
            if x + item.width > 24:
                y, x, row_h = y + row_h, 0, 0
            panels.append(_panel_json(item, panel_id, x, y))
            x, row_h = x + item.width, max(row_h, item.height)
        panel_id += 1
    return {
        "id": None, "uid": d.uid, "title": d.title, "description": d.description, "tags": d.tags,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": False, "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "timezone": "", "refresh": "30s",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "Converter", "type": "dashboards", "tags": ["converter"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": _variables(d)},
        "panels": panels,
    }


def dashboard_text(d: Dashboard) -> str:
    return json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"


# -- the metrics, read from fresh registries ----------------------------------------------------------------------


@dataclass
class MetricDoc:
    side: str
    name: str  # the name used in PromQL (counters with _total, info with _info)
    kind: str
    labels: list[str]
    help: str


def metric_docs() -> list[MetricDoc]:
    """Every family a fresh MasterMetrics/WorkerMetrics registers, with its labels."""
    sys.path.insert(0, str(ROOT))
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from master.metrics import MasterMetrics
    from master.store import JobStore
    from worker.metrics import WorkerMetrics

    docs: list[MetricDoc] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "doc.db")
        try:
            master_registry, worker_registry = CollectorRegistry(), CollectorRegistry()
            master = MasterMetrics(master_registry, store, Path(tmp), online_window=lambda: 60.0)
            worker = WorkerMetrics(worker_registry)
            worker.watch_cache(Path(tmp))
            for side, registry, owner in (("master", master_registry, master), ("worker", worker_registry, worker)):
                declared = {m._name: list(m._labelnames) for m in vars(owner).values()
                            if isinstance(m, MetricWrapperBase)}
                for family in registry.collect():
                    labels = list(declared.get(family.name, []))
                    for sample in family.samples:
                        labels += [k for k in sample.labels if k not in labels and k not in ("le", "quantile")]
                    suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
                    docs.append(MetricDoc(side, family.name + suffix, family.type, labels,
                                          family.documentation))
        finally:
            store.close()
    return docs


def alert_rules() -> list[dict]:
    import yaml

    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
            if "alert" in rule]


# -- the doc ------------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _cell(" ".join(text.split())) + "`"


def doc_text() -> str:
    out = [
        "# Observability",
        "",
        "<!-- Generated by grafana/generate.py from the metric registries, grafana/dashboards and",
        "     grafana/prometheus/alerts.yml; tests/integration/test_observability.py fails when it is stale. -->",
        "",
        "The master serves Prometheus metrics at `/metrics` on its API port; each worker serves them on",
        "`worker.metrics_host:worker.metrics_port` (default `0.0.0.0:9101`, `0` turns it off). Scrape them as jobs",
        "`converter-master` and `converter-worker` (example: `grafana/prometheus/prometheus.yml`); Prometheus adds the",
        "target labels `job` and `instance`, the daemons never set them.",
        "",
        "Files:",
        "",
        "- `grafana/dashboards/*.json`: the dashboards below (generated: `.venv/bin/python grafana/generate.py`).",
        "- `grafana/provisioning/datasources/converter.yml`, `grafana/provisioning/dashboards/converter.yml`:",
        "  Grafana provisioning: a Prometheus data source with the fixed uid `converter-prometheus`, and a file",
        "  provider reading `/var/lib/grafana/dashboards` (copy `grafana/dashboards/*.json` into its `converter/`",
        "  subfolder, which becomes the Grafana folder).",
        "- `grafana/prometheus/prometheus.yml`: an example scrape config (`promtool check config`).",
        "- `grafana/prometheus/alerts.yml` with unit tests in `grafana/prometheus/alerts_test.yml`",
        "  (`promtool test rules grafana/prometheus/alerts_test.yml`).",
        "",
        "## Metrics",
        "",
        "Counters are exposed with `_total` (and, unless `PROMETHEUS_DISABLE_CREATED_SERIES=True` is set in the",
        "environment, a `_created` gauge); histograms as `_bucket`, `_sum` and `_count`; info metrics as `_info`",
        "with value 1.",
    ]
    docs = metric_docs()
    for side, heading in (("master", "Master (`/metrics` on the API port)"),
                          ("worker", "Worker (`worker.metrics_port`)")):
        out += ["", f"### {heading}", "", "| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
        for m in docs:
            if m.side == side:
                labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
                out.append(f"| `{m.name}` | {m.kind} | {labels} | {_cell(m.help)} |")
    out += ["", "### Several masters (PostgreSQL)", "",
            "Every master exposes its own figures; sum or compare them by `instance`. Those that matter with several",
            "masters: `converter_master_jobs_claimed_total` (claims per master), `converter_master_job_notices_total`",
            "(NOTIFY wake-ups heard), `converter_master_db_connections{state}` and `converter_master_db_waiting` (the",
            "connection pool), `converter_master_db_available` (0 while the database is away: the master answers 503",
            "and `/healthz` reports not ready) and the two reconnect counters (`converter_master_db_reconnects_total`",
            "for the pool, `converter_master_job_notices_reconnects_total` for the NOTIFY listener).",
            "",
            "There is no leader-status metric because there is no leader: every periodic duty (lease reaper, upload",
            "expiry, abandoned bucket uploads, watch-folder scan) is a guarded, idempotent statement that every master",
            "runs at once (`docs/architecture.md`, \"Several masters\"), so no master is ever special."]
    out += ["", "## Dashboards", "",
            "Every dashboard has a `datasource` variable (type Prometheus) and multi-value `job` and `instance`",
            "variables (all = `.+`, refreshed on time-range change). Every panel uses `${datasource}`, every selector",
            "is filtered by `job=~\"$job\", instance=~\"$instance\"` and every range is `[$__rate_interval]`."]
    for d in ALL:
        data = dashboard_json(d)
        out += ["", f"### {d.title} (uid `{d.uid}`, `grafana/dashboards/{d.filename}`)", "", d.description, "",
                "| Variable | Query |", "|---|---|"]
        for var in data["templating"]["list"]:
            query = (_code(var["query"]["query"]) if isinstance(var["query"], dict)
                     else f"data source picker, type `{var['query']}`")
            out.append(f"| `{var['name']}` | {query} |")
        out += ["", "| Panel | Unit | Query (legend) |", "|---|---|---|"]
        section = ""
        for panel in data["panels"]:
            if panel["type"] == "row":
                section = panel["title"]
                continue
            queries = "<br>".join(f"{_code(t['expr'])}" + (f" ({_cell(t['legendFormat'])})" if t["legendFormat"]
                                                            else "") for t in panel["targets"])
            out.append(f"| {section} / **{_cell(panel['title'])}**: {_cell(panel['description'])} | "
                       f"`{panel['fieldConfig']['defaults']['unit']}` | {queries} |")
    out += ["", "## Alerts", "", "Rules in `grafana/prometheus/alerts.yml`, one group `converter`.", "",
            "| Alert | Severity | For | Expression | Summary |", "|---|---|---|---|---|"]
    for rule in alert_rules():
        out.append(f"| `{rule['alert']}` | {rule['labels']['severity']} | {rule.get('for', '0s')} | "
                   f"{_code(rule['expr'])} | {_cell(rule['annotations']['summary'])} |")
    return "\n".join(out) + "\n"


def outputs() -> dict[Path, str]:
    files = {DASHBOARDS / d.filename: dashboard_text(d) for d in ALL}
    files[DOC] = doc_text()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
