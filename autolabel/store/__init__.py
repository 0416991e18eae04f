"""The autolabel store: SQLAlchemy models, engine/session handling, migrations and repository functions.

Typical use::

    from autolabel.store import open_store, repository as repo
    store = open_store()                 # AUTOLABEL_DB_URL or <user data dir>/autolabel.sqlite, migrated
    with store.write() as s:
        job = repo.create_job(s, "prelabel", params={...})
"""

from autolabel.store import repository
from autolabel.store.codec import detections_from_json, detections_to_json, summary_score
from autolabel.store.db import (
    DB_URL_ENV,
    Store,
    current_revision,
    default_db_path,
    downgrade_db,
    make_engine,
    open_store,
    resolve_db_url,
    sqlite_url,
    upgrade_db,
)

__all__ = [
    "DB_URL_ENV", "Store", "current_revision", "default_db_path", "detections_from_json", "detections_to_json",
    "downgrade_db", "make_engine", "open_store", "repository", "resolve_db_url", "sqlite_url", "summary_score",
    "upgrade_db",
]
