"""The two databases the job store runs on: SQLite (a file, the embedded default) and PostgreSQL (several masters).

``JobStore`` (``master/store.py``) writes its SQL once, in SQLite's spelling; ``PostgresDatabase`` translates the
few differences as each statement is run (``?`` and ``:name`` placeholders, ``rowid``, two-argument ``MAX``,
``IS ?``) and keeps the same row shape (a row is read by index, by column name and with ``dict(row)``).
Statements that must differ in meaning, not spelling (a claim that skips rows another master has locked), ask
``database.dialect``.

Both run their statements on the thread that calls them (the IOLoop's), one at a time under the store's lock:
a master's statements are short (``docs/benchmarks.md``, "PostgreSQL connections", weighs this against a
bounded thread pool). PostgreSQL takes its connection from a small pool that replaces broken ones, so a
restart of the database costs requests a 503 while it is down and nothing once it is back.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger("converter.master")

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_MAX2 = re.compile(r"\bMAX\(([^(),]+),([^(),]+)\)")
_IS_PARAM = re.compile(r"\bIS \?")
_TUPLES_OK = 2  # psycopg.pq.ExecStatus.TUPLES_OK: a result with rows (imported with psycopg only where it is used)


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the master (its message says why, without the password)."""


def redacted(url: str) -> str:
    """A database URL fit for a log line: the password replaced."""
    return re.sub(r"://([^:@/]+):[^@]*@", r"://\1:***@", url)


class SqliteDatabase:
    """A SQLite file in WAL mode."""

    dialect = "sqlite"
    IntegrityError = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process; only an OS crash may lose the last ones.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()):
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self._db.executescript(script)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    available = True
    reconnects = 0

    def pool_state(self) -> "PoolState":
        return PoolState(in_use=0, idle=1, waiting=0)

    def close(self) -> None:
        self._db.close()


class Row(tuple):
    """A PostgreSQL row as ``sqlite3.Row`` reads: by index, by column name, and as ``dict(row)``."""

    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return self._names


@functools.lru_cache(maxsize=256)  # a master's statements return a few dozen distinct column lists
def _row_type(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_names": names, "_index": {name: i for i, name in enumerate(names)}})


def _column_names(cursor) -> tuple[str, ...]:
    """The current result's column names, read from the result itself (``cursor.description`` builds a ``Column``
    with its type looked up for each, at every statement: a third of a claim's CPU in the master)."""
    result = cursor.pgresult
    return tuple(result.fname(i).decode() for i in range(result.nfields)) if result is not None else ()


def _row_factory(cursor):
    return _row_type(_column_names(cursor))


def _has_rows(cursor) -> bool:
    """Whether the statement returned rows (a SELECT, a RETURNING), as ``cursor.description is not None`` says."""
    result = cursor.pgresult
    return result is not None and (result.nfields > 0 or result.status == _TUPLES_OK)


class Rows:
    """A statement's result, read before its connection went back to the pool: ``fetchone``, ``fetchall``,
    ``rowcount`` and iteration, as a cursor offers them."""

    def __init__(self, cursor) -> None:
        self._rows = cursor.fetchall() if _has_rows(cursor) else []
        self.rowcount = cursor.rowcount

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list:
        return list(self._rows)

    def __iter__(self):
        return iter(self._rows)


@dataclass
class PoolState:
    """What the pool is doing now, for the metrics."""

    in_use: int
    idle: int
    waiting: int


# A database host that vanishes without a reset (power loss, a cut link) would otherwise hold a statement, and the
# IOLoop running it, until the kernel gives up on the connection (~15 min): notice within ~20 s instead.
SILENT_PEER_LIMITS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
                      "tcp_user_timeout": 20_000}


class PostgresDatabase:
    """A PostgreSQL database (psycopg 3) through a small ``psycopg_pool.ConnectionPool`` of autocommit connections;
    transactions are explicit and keep one connection, bound to the thread that opened them.

    The pool replaces a broken connection in its own worker threads, so connecting never blocks the IOLoop.
    While the database is away (a connection broke, or none could be had within ``wait`` seconds) every
    statement raises ``DatabaseUnavailable`` at once instead of waiting, except one probe every
    ``PROBE_SECONDS``; the first statement to get a connection again ends the outage.
    """

    dialect = "postgres"
    PROBE_SECONDS = 0.5

    def __init__(self, url: str, *, pool_size: int = 2, wait: float = 2.0) -> None:
        import psycopg
        import psycopg_pool

        self.IntegrityError = psycopg.IntegrityError
        self._url, self._wait = url, wait
        self.reconnects = 0  # outages that ended: the converter_master_db_reconnects counter
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # a line per attempt; _lost and _back say it once
        self._broken = (psycopg.OperationalError, psycopg.InterfaceError)
        self._PoolTimeout = psycopg_pool.PoolTimeout
        self._check_reachable(psycopg)
        # reconnect_timeout: the pool gives up a connection attempt soon and starts a fresh one on the next
        # demand (its own back-off doubles without a cap, which could leave a master waiting minutes after
        # the database is back)
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, name="converter", reconnect_timeout=2.0,
            kwargs={"autocommit": True, "row_factory": _row_factory, "connect_timeout": 5, **SILENT_PEER_LIMITS})
        try:
            self._pool.open(wait=True, timeout=15)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise DatabaseUnavailable(f"{redacted(url)}: {exc}") from None
        self._held = threading.local()
        self._state_lock = threading.Lock()
        self._down_since: float | None = None
        self._next_probe = 0.0

    def _check_reachable(self, psycopg) -> None:
        """At start-up, one plain connection: its error says why (a wrong password, no such database)."""
        try:
            psycopg.connect(self._url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"{redacted(self._url)}: {exc}") from None

    @property
    def available(self) -> bool:
        return self._down_since is None

    @property
    def in_transaction(self) -> bool:
        return getattr(self._held, "connection", None) is not None

    def pool_state(self) -> PoolState:
        stats = self._pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return PoolState(in_use=max(size - idle, 0), idle=idle, waiting=stats.get("requests_waiting", 0))

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Rows:
        with self._connection() as connection:
            return Rows(connection.execute(translate(sql, named=isinstance(params, dict)), params or None))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connection() as connection, connection.cursor() as cursor:
            cursor.executemany(translate(sql, named=False), list(rows))

    def executescript(self, script: str) -> None:
        with self._connection() as connection:
            connection.execute(script)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._connection() as connection, connection.transaction():
            self._held.connection = connection
            try:
                yield
            finally:
                self._held.connection = None

    def columns(self, table: str) -> set[str]:
        rows = self.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
        return {row[0] for row in rows}

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's transaction's connection, or one from the pool for one statement."""
        held = getattr(self._held, "connection", None)
        if held is not None:
            yield held
            return
        connection = self._checkout()
        try:
            yield connection
        except self._broken as exc:
            if connection.broken or connection.closed:
                raise self._lost(exc) from None
            raise
        finally:
            self._pool.putconn(connection)

    def _checkout(self) -> Any:
        """A connection from the pool; ``DatabaseUnavailable`` at once while the database is known to be away."""
        now = time.monotonic()
        with self._state_lock:
            probing = self._down_since is not None
            if probing and now < self._next_probe:
                raise DatabaseUnavailable(f"the database has been unreachable for {now - self._down_since:.0f} s")
            self._next_probe = now + self.PROBE_SECONDS
        try:
            connection = self._pool.getconn(timeout=0.05 if probing else self._wait)
        except self._PoolTimeout as exc:
            raise self._lost(exc) from None
        if probing:
            self._back()
        return connection

    def _lost(self, exc: BaseException) -> DatabaseUnavailable:
        with self._state_lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self._next_probe = self._down_since + self.PROBE_SECONDS
        if first:
            log.error("database %s unreachable: %s; requests that need it answer 503 until it is back",
                      redacted(self._url), " ".join(str(exc).split()))
            self._pool.check()  # its other idle connections broke with this one: replaced in the background
        return DatabaseUnavailable(f"the database is unreachable: {' '.join(str(exc).split())}")

    def _back(self) -> None:
        with self._state_lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.reconnects += 1
            log.warning("database %s reachable again after %.1f s", redacted(self._url), time.monotonic() - since)


@functools.lru_cache(maxsize=1024)  # a master runs a few dozen distinct statements, each many times
def translate(sql: str, *, named: bool) -> str:
    """SQLite's spelling of a statement in PostgreSQL's."""
    sql = sql.replace("%", "%%")
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    sql = _MAX2.sub(r"GREATEST(\1,\2)", sql)
    sql = re.sub(r"\browid\b", "seq", sql)
    if named:
        return _NAMED.sub(r"%(\1)s", sql)
    return sql.replace("?", "%s")


def open_database(url_or_path: str | Path) -> SqliteDatabase | PostgresDatabase:
    """``postgresql://...`` opens PostgreSQL; anything else is a SQLite file's path."""
    if isinstance(url_or_path, str) and url_or_path.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url_or_path)
    return SqliteDatabase(Path(url_or_path))
