"""``converter-worker``: load the config, run the worker until SIGTERM/SIGINT, exit 0 after a clean stop."""

from __future__ import annotations

import logging
import signal
import sys

from prometheus_client import start_http_server

from converter_common.runtime_metrics import production_registry
from converter_common.config_loader import ConfigError, parse_daemon_args
from worker.config import load_config
from worker.worker import Worker

log = logging.getLogger("converter.worker")


def main(argv: list[str] | None = None) -> int:
    args = parse_daemon_args("converter-worker", "Run a converter worker.", argv)
    try:
        config = load_config(args.config)
        config.master.token()  # an unreadable token file is a config error, reported before start-up
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check_config:
        print("config ok")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    registry = production_registry()
    worker = Worker.from_config(config, registry)
    if config.worker.metrics_port:
        try:
            start_http_server(config.worker.metrics_port, config.worker.metrics_host, registry=registry)
        except OSError as exc:
            print(f"converter-worker: cannot serve metrics on {config.worker.metrics_host}:"
                  f"{config.worker.metrics_port}: {exc.strerror}", file=sys.stderr)
            return 1

    def on_signal(signum: int, _frame) -> None:
        log.info("received %s: finishing up", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("worker %s starting (master %s, cache %s, concurrency %s)", config.worker.id, config.master.url,
             config.storage.cache_path, config.worker.concurrency)
    worker.run()
    log.info("worker stopped")
    return 0
