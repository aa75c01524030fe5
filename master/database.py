"""The two databases the job store runs on: SQLite (a file, the embedded default) and PostgreSQL (several masters).

``JobStore`` (``master/store.py``) writes its SQL once, in SQLite's spelling; ``PostgresDatabase`` translates the
few differences as each statement is run (``?`` and ``:name`` placeholders, ``rowid``, two-argument ``MAX``,
``IS ?``) and keeps the same row shape (a row is read by index, by column name and with ``dict(row)``).
Statements that must differ in meaning, not spelling (a claim that skips rows another master has locked), ask
``database.dialect``.

Both keep one connection guarded by the store's lock: a master's statements are short, and one connection
per master keeps the row locks of a claim and its update on the same session.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_MAX2 = re.compile(r"\bMAX\(([^(),]+),([^(),]+)\)")
_IS_PARAM = re.compile(r"\bIS \?")


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

    def close(self) -> None:
        self._db.close()


class Row(tuple):
    """A PostgreSQL row as ``sqlite3.Row`` reads: by index, by column name, and as ``dict(row)``."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return self._names


def _row_factory(cursor):
    names = tuple(column.name for column in cursor.description or ())
    row_type = type("Row", (Row,), {"_names": names})

    def make(values: Sequence[Any]) -> Row:
        return row_type(values)
    return make


class PostgresDatabase:
    """A PostgreSQL database (psycopg 3), one autocommit connection; transactions are explicit."""

    dialect = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        self.IntegrityError = psycopg.IntegrityError
        try:
            self._db = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"{redacted(url)}: {exc}") from None
        self._depth = 0

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()):
        return self._db.execute(translate(sql, named=isinstance(params, dict)), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(translate(sql, named=False), list(rows))

    def executescript(self, script: str) -> None:
        self._db.execute(script)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._db.transaction():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def columns(self, table: str) -> set[str]:
        rows = self._db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                                (table,)).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        self._db.close()


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
