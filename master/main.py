"""``converter-master``: load the config, open the store, serve until SIGTERM/SIGINT; ``converter-master migrate-db``:
copy a SQLite queue into PostgreSQL (``master/migrate_db.py``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Callable

import tornado.ioloop

from converter_common.background_file_writer import BatchWriter
from converter_common.config_loader import ConfigError, parse_daemon_args
from converter_common.runtime_metrics import production_registry
from converter_common.systemd import Notifier
from master.app import start_master
from master.auth import load_tokens, refuse_open_exposure
from master.config import DatabaseConfig, load_config
from master.database import DatabaseUnavailable, redacted
from master.migrate_db import MigrationRefused, migrate
from master.store import JobStore
from master.uploads import UploadRegistry

log = logging.getLogger("converter.master")


def main(argv: list[str] | None = None, receive_writer: Callable[..., BatchWriter] = BatchWriter) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["migrate-db"]:
        return migrate_db(argv[1:])
    args = parse_daemon_args("converter-master", "Run the converter master (`converter-master migrate-db --help`:"
                             " copy its SQLite queue into PostgreSQL).", argv)
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


def migrate_db(argv: list[str]) -> int:
    """``converter-master migrate-db``: the SQLite queue into an empty PostgreSQL database (``migrate_db.py``)."""
    parser = argparse.ArgumentParser(
        prog="converter-master migrate-db",
        description="Copy the SQLite queue (every job, worker and upload) into an empty PostgreSQL database, in one"
                    " transaction. Stop the master first.")
    parser.add_argument("--config", help="the master's config: its database.path is the source, its database.url"
                                         " (with password_file) the target")
    parser.add_argument("--from", dest="source", metavar="PATH", help="the SQLite file (default: database.path)")
    parser.add_argument("--to", dest="target", metavar="URL",
                        help="postgresql://user@host/db (default: database.url); the password from --password-file"
                             " or PGPASSWORD, never on the command line")
    parser.add_argument("--password-file", type=Path, metavar="PATH", help="the PostgreSQL password (mode 0600)")
    args = parser.parse_args(argv)
    try:
        database = load_config(args.config).database
        source = Path(args.source) if args.source else database.path
        if args.target:
            database = DatabaseConfig(url=args.target, password_file=args.password_file)
            database.validate("--to/--password-file")  # a URL, and a password file only its owner reads
        if database.url is None:
            raise ValueError("no target: give --to postgresql://... or a --config with database.url")
        target = str(database.location())
    except (OSError, ValueError) as exc:  # ConfigError included
        print(f"converter-master migrate-db: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        copied = migrate(source, target)
    except (MigrationRefused, DatabaseUnavailable, sqlite3.DatabaseError, OSError) as exc:
        print(f"converter-master migrate-db: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"copied {source} into {redacted(target)}, in one transaction:")
    for table, rows in copied.items():
        print(f"  {table:<16} {rows:>9} rows")
    return 0


def status_line(store: JobStore) -> str:
    try:
        counts = store.counts_by_status()
        workers = len(store.list_workers())
    except DatabaseUnavailable:
        return "database unavailable"
    return f"pending={counts['pending']} processing={counts['processing']} workers={workers}"



def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
