"""Engine, sessions and migrations of the autolabel store.

Where the database lives: the SQLAlchemy URL passed in, else env ``AUTOLABEL_DB_URL`` (any SQLAlchemy URL,
e.g. ``postgresql+psycopg://user:pw@host/db``), else the SQLite file ``<user data dir>/autolabel.sqlite``
(``platformdirs.user_data_dir("autolabel")``, e.g. ``~/.local/share/autolabel/autolabel.sqlite`` on Linux).

SQLite is set up for several writer processes (server workers, the CLI): WAL journal, foreign keys ON,
a 30 s busy timeout, and write transactions opened with ``BEGIN IMMEDIATE`` so two writers queue on the
lock instead of failing with "database is locked" when one upgrades a read lock. Readers never block.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

DB_URL_ENV = "AUTOLABEL_DB_URL"
DB_FILE_NAME = "autolabel.sqlite"
BUSY_TIMEOUT_S = 30.0
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_BEGIN_OPTION = "autolabel_sqlite_begin"


def default_db_path() -> Path:
    """``<user data dir>/autolabel.sqlite`` (the directory is not created here)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("autolabel", appauthor=False)) / DB_FILE_NAME


def resolve_db_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else env AUTOLABEL_DB_URL, else the default SQLite file (its folder created)."""
    url = url or os.environ.get(DB_URL_ENV) or None
    if url is None:
        path = default_db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return url


def sqlite_url(path: str | os.PathLike) -> str:
    """SQLAlchemy URL of a SQLite file path."""
    return f"sqlite:///{Path(path).absolute()}"


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str | None = None, echo: bool = False) -> Engine:
    """An Engine for ``url`` (see :func:`resolve_db_url`), with the SQLite set-up described in the module doc."""
    url = resolve_db_url(url)
    if not _is_sqlite(url):
        return create_engine(url, echo=echo, pool_pre_ping=True)
    database = make_url(url).database
    in_memory = database in (None, "", ":memory:")
    if not in_memory:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {"connect_args": {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}}
    if in_memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types
        # Let SQLAlchemy (not the sqlite3 module) decide when transactions begin, see _on_begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not in_memory:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def writer_engine(engine: Engine) -> Engine:
    """The same engine (shared pool) whose transactions take the SQLite write lock up front."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def _run_alembic(url: str | None, action: str, revision: str) -> None:
    """Run alembic ``upgrade``/``downgrade`` inside one locked transaction (see :func:`upgrade_db`)."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with writer_engine(engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7418305)"))
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


def upgrade_db(url: str | None = None, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` (idempotent; safe when several processes start at once).

    On SQLite the whole upgrade runs in one ``BEGIN IMMEDIATE`` transaction, on PostgreSQL under an advisory
    lock, so concurrent callers run one after the other and later ones find the schema current.
    """
    _run_alembic(url, "upgrade", revision)


def downgrade_db(url: str | None = None, revision: str = "base") -> None:
    """Undo migrations down to ``revision`` ('base' drops every table of the store)."""
    _run_alembic(url, "downgrade", revision)


def current_revision(url: str | None = None) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


class Store:
    """A database handle: ``with store.read() as s`` for queries, ``with store.write() as s`` to change data.

    ``write()`` commits on success and rolls back on an exception; on SQLite it holds the write lock for the
    whole block, so keep write blocks short (no downloads or model calls inside them). Thread-safe: every
    block gets its own Session.
    """

    def __init__(self, url: str | None = None, migrate: bool = True, echo: bool = False) -> None:
        self.url = resolve_db_url(url)
        if migrate:
            upgrade_db(self.url)
        self.engine = make_engine(self.url, echo=echo)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer_engine(self.engine), expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._writer() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"


def open_store(url: str | None = None, migrate: bool = True) -> Store:
    """A :class:`Store` on ``url`` (default: see module doc), migrated to the latest schema unless told not to."""
    return Store(url, migrate=migrate)
