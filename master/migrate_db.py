"""``converter-master migrate-db``: copy a SQLite queue into an empty PostgreSQL database, in one transaction.

Every table the store keeps is copied row for row, ids kept: jobs in every state with their history, the
worker registry, uploads in progress, the bucket uploads of running attempts. PostgreSQL's ``jobs.seq`` stands
for SQLite's ``rowid`` (claims and job lists go in that order), so it is copied from the rowid, and its sequence
is then set past the largest one: a job made afterwards comes after every copied job.

The target is first brought to this build's schema by the store's own migrations (``JobStore``); the source is
only read, and must already be at that schema version.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

from master.database import SqliteDatabase, open_database, redacted
from master.store import MIGRATIONS, JobStore

BATCH = 5000
_OWN_TABLES = ("schema_migrations",)  # the target's migrations fill it; the versions are compared instead
# SQLite's WAL index (the -shm file): every connection holds a read lock on this byte for as long as it has the
# database open (SQLite's "DMS" lock, https://www.sqlite.org/walformat.html), so a write lock on it is refused
# exactly while some process (a master) has the file open.
_SQLITE_DMS_BYTE = 128


class MigrationRefused(Exception):
    """Nothing was copied; the message (one line) says why."""


def migrate(source: Path, target_url: str) -> dict[str, int]:
    """Copy every table of the SQLite file ``source`` into the PostgreSQL database ``target_url``, which must
    hold no rows yet; how many rows each table got."""
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise MigrationRefused(f"the target must be a postgresql:// URL, not {redacted(target_url)!r}")
    _check_source_free(source)
    reader = _open_source(source)
    try:
        _check_version(str(source), _schema_version(reader))
        JobStore(target_url).close()  # the target's schema, by the store's own migrations
        writer = open_database(target_url)
        try:
            _check_version(redacted(target_url), _schema_version(writer))
            return _copy_all(reader, writer, redacted(target_url))
        finally:
            writer.close()
    finally:
        reader.close()


def _check_source_free(source: Path) -> None:
    if not source.is_file():
        raise MigrationRefused(f"no SQLite database at {source}")
    try:
        fd = os.open(f"{source}-shm", os.O_RDWR)
    except FileNotFoundError:
        return  # no connection has it open in WAL mode
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SQLITE_DMS_BYTE)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise MigrationRefused(f"{source} is in use (a master has it open): stop it first") from None
    finally:
        os.close(fd)


def _open_source(source: Path) -> SqliteDatabase:
    try:
        return SqliteDatabase(source)
    except sqlite3.DatabaseError as exc:  # not a SQLite file
        raise MigrationRefused(f"{source}: {exc}") from None


def _schema_version(database) -> int:
    tables = _tables(database)
    if "schema_migrations" not in tables:
        return 0
    return database.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0


def _check_version(where: str, version: int) -> None:
    latest = MIGRATIONS[-1][0]
    if version < latest:
        raise MigrationRefused(f"{where} is at schema version {version}, this build's is {latest}: start this"
                               " build's master on it once (it migrates at start-up), stop it, then migrate")
    if version > latest:
        raise MigrationRefused(f"{where} is at schema version {version}, newer than this build's ({latest}):"
                               " migrate with the build that made it")


def _tables(database) -> list[str]:
    if database.dialect == "sqlite":
        rows = database.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                " AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    else:
        rows = database.execute("SELECT table_name FROM information_schema.tables"
                                " WHERE table_schema = current_schema() ORDER BY table_name").fetchall()
    return [row[0] for row in rows]


def _copy_all(reader: SqliteDatabase, writer, target: str) -> dict[str, int]:
    """In one transaction on each side: the source read as of one moment (its write lock held, so nothing
    changes it meanwhile), the target's tables locked, checked empty, filled, and its sequences set."""
    import psycopg

    tables = [table for table in _tables(reader) if table not in _OWN_TABLES]
    missing = set(tables) - set(_tables(writer))
    if missing:
        raise MigrationRefused(f"{target} lacks table(s) {', '.join(sorted(missing))}")
    try:
        with reader.transaction(), writer.transaction():
            writer.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            _check_empty(writer, tables, target)
            copied = {table: _copy_table(reader, writer, table) for table in tables}
            _set_sequences(writer)
    except psycopg.Error as exc:
        raise MigrationRefused(f"copying into {target} failed, nothing was copied: {exc}") from None
    return copied


def _check_empty(writer, tables: list[str], target: str) -> None:
    counts = {table: writer.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}
    held = ", ".join(f"{table}: {rows} rows" for table, rows in counts.items() if rows)
    if held:
        raise MigrationRefused(f"{target} is not empty ({held}): migrate-db copies into an empty database only")


def _copy_table(reader: SqliteDatabase, writer, table: str) -> int:
    """The rows of one table, in rowid order; ``seq`` (PostgreSQL's insertion order) taken from the rowid."""
    columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
    extra = writer.columns(table) - set(columns)
    if extra - {"seq"} or set(columns) - writer.columns(table):
        raise MigrationRefused(f"table {table}: the columns differ between source and target")
    names = ", ".join(f'"{name}"' for name in columns)
    if extra:
        write = f"INSERT INTO {table} ({names}, seq) OVERRIDING SYSTEM VALUE VALUES ({_marks(len(columns) + 1)})"
        cursor = reader.execute(f"SELECT {names}, rowid FROM {table} ORDER BY rowid")
    else:
        write = f"INSERT INTO {table} ({names}) VALUES ({_marks(len(columns))})"
        cursor = reader.execute(f"SELECT {names} FROM {table} ORDER BY rowid")
    copied = 0
    while batch := cursor.fetchmany(BATCH):
        writer.executemany(write, [tuple(row) for row in batch])
        copied += len(batch)
    return copied


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _set_sequences(writer) -> None:
    """Each identity column's sequence continues after the largest value copied (none copied: left as it is)."""
    identities = writer.execute("SELECT table_name, column_name FROM information_schema.columns"
                                " WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall()
    for table, column in identities:
        writer.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), MAX({column})) FROM {table}")
