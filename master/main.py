"""``converter-master``: load the config, open the store, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Callable

import tornado.ioloop

from converter_common.background_file_writer import BatchWriter
from converter_common.config_loader import ConfigError, parse_daemon_args
from converter_common.runtime_metrics import production_registry
from converter_common.systemd import Notifier
from master.app import start_master
from master.auth import load_tokens, refuse_open_exposure
from master.config import load_config
from master.database import DatabaseUnavailable, redacted
from master.store import JobStore
from master.uploads import UploadRegistry

log = logging.getLogger("converter.master")


def main(argv: list[str] | None = None, receive_writer: Callable[..., BatchWriter] = BatchWriter) -> int:
    args = parse_daemon_args("converter-master", "Run the converter master.", argv)
    try:
        config = load_config(args.config)
        tokens = load_tokens(config.auth.admin_token_file, config.auth.worker_token_file)
        refuse_open_exposure(config.server.host, tokens, config.auth.allow_anonymous)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check_config:
        print("config ok")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.storage.root.mkdir(parents=True, exist_ok=True)
    try:
        store = JobStore(config.database.location())
    except (OSError, ValueError, DatabaseUnavailable) as exc:
        print(f"converter-master: cannot open the database: {one_line(exc)}", file=sys.stderr)
        return 1
    removed = UploadRegistry(config, store).clean_at_start()
    if removed:
        log.info("removed %d unfinished upload file(s) left by a previous run", removed)
    try:
        asyncio.run(_serve(config, store, tokens, receive_writer))
    except OSError as exc:
        print(f"converter-master: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


async def _serve(config, store, tokens, receive_writer) -> None:
    running = start_master(config, store, production_registry(), tokens=tokens, receive_writer=receive_writer)
    log.info("master listening on http://%s:%d (storage %s, database %s)", config.server.host, running.port,
             config.storage.root, redacted(config.database.url) if config.database.url else config.database.path)
    notifier = Notifier()
    notifier.ready(status_line(store))
    pinger = _start_watchdog(notifier, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    notifier.stopping()
    if pinger is not None:
        pinger.stop()
    running.stop()


def _start_watchdog(notifier: Notifier, store: JobStore) -> tornado.ioloop.PeriodicCallback | None:
    """Ping systemd's watchdog from the IOLoop itself, so a blocked loop is caught and restarted."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return None

    def ping() -> None:
        notifier.watchdog()
        notifier.status(status_line(store))

    pinger = tornado.ioloop.PeriodicCallback(ping, interval * 1000)
    pinger.start()
    return pinger


def status_line(store: JobStore) -> str:
    counts = store.counts_by_status()
    workers = len(store.list_workers())
    return f"pending={counts['pending']} processing={counts['processing']} workers={workers}"



def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
