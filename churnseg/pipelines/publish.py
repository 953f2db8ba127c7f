"""Publishing scored customers to the output database, one snapshot per transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow.parquet as pq

SCORE_COLUMNS: dict[str, str] = {
    "customer_id": "TEXT NOT NULL",
    "snapshot_date": "TEXT NOT NULL",
    "segment_id": "INTEGER NOT NULL",
    "segment_name": "TEXT NOT NULL",
    "churn_probability": "REAL NOT NULL",
    "segmentation_model_version": "INTEGER NOT NULL",
    "churn_model_version": "INTEGER NOT NULL",
    "run_id": "TEXT NOT NULL",
    "scored_at": "TEXT NOT NULL",
}


class PublishError(RuntimeError):
    """The output database cannot take the snapshot; nothing was changed."""


def sqlite_path(url: str) -> Path:
    """Return the file of a ``sqlite:///path`` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise PublishError("only sqlite:/// publish URLs are supported by this version")
    return Path(url[len(prefix) :])


def publish_scores(scores_path: Path, url: str, table: str, batch_rows: int = 100_000) -> int:
    """Replace the snapshot(s) in ``scores_path`` in ``table`` atomically; return rows written.

    The delete of the old rows and the insert of the new ones share one ``BEGIN IMMEDIATE``
    transaction, so readers see the old snapshot or the new one, never a mix, and concurrent
    publishers of the same snapshot serialise.
    """
    if not table.replace("_", "").isalnum():
        raise PublishError(f"table name {table!r} is not a plain identifier")
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet = pq.ParquetFile(scores_path)
    cols = list(SCORE_COLUMNS)
    snapshots = sorted(set(pq.read_table(scores_path, columns=["snapshot_date"])[0].to_pylist()))
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        con.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" ('
            + ", ".join(f"{c} {t}" for c, t in SCORE_COLUMNS.items())
            + ", PRIMARY KEY (snapshot_date, customer_id))"
        )
        con.execute("BEGIN IMMEDIATE")
        con.executemany(
            f'DELETE FROM "{table}" WHERE snapshot_date = ?', [(str(s),) for s in snapshots]
        )
        written = 0
        insert = f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})'
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=cols):
            rows = list(zip(*(batch.column(c).to_pylist() for c in cols), strict=True))
            con.executemany(insert, [tuple(map(_sql_value, r)) for r in rows])
            written += len(rows)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return written


def _sql_value(value: object) -> object:
    """Return ``value`` in a form sqlite3 stores (dates and timestamps as ISO text)."""
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else value
