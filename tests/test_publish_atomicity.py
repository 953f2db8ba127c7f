"""A publisher killed mid-write leaves the previous state; two publishers of one snapshot serialise.

Publishers run as real subprocesses (``python -c``), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnseg.pipelines.publish import PublishTarget, publish_scores
from tests.test_publish import PG_URL, pg_schema, query, scores, target, write

__all__ = ["pg_schema", "target"]  # fixtures shared with test_publish

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys
from pathlib import Path
from churnseg.pipelines.publish import PublishTarget, publish_scores

url, schema, path, chunk = sys.argv[1:5]
target = PublishTarget(url, db_schema=schema or None, chunk_rows=int(chunk))
written = publish_scores(Path(path), target, lambda rows: print(rows, flush=True))
print("done", written, flush=True)
"""
SNAPSHOT = "2026-02-01"
SUMMARY = (
    "SELECT COUNT(*), ROUND(CAST(SUM(churn_probability) AS NUMERIC), 6), "
    "MIN(customer_id), MAX(customer_id) FROM {schema}.customer_scores WHERE snapshot_date = ?"
)


def big_scores(rows: int, p: float) -> pd.DataFrame:
    frame = scores(SNAPSHOT, [f"C{i:07d}" for i in range(rows)], p)
    frame["churn_probability"] = np.linspace(0, p, rows)
    return frame


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400,000 scored rows of one snapshot: long enough a publish to be caught mid-write."""
    return write(big_scores(400_000, 0.9), tmp_path_factory.mktemp("big") / "big.parquet")


def start_publisher(target: PublishTarget, path: Path, url: str | None = None) -> subprocess.Popen:
    args = [url or target.url, target.db_schema or "", str(path), "20000"]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def state(target: PublishTarget) -> list[tuple[Any, ...]]:
    return query(
        target,
        "SELECT snapshot_date, customer_id, churn_probability FROM {schema}.customer_scores "
        "ORDER BY 1, 2",
    )


def seed(target: PublishTarget, tmp_path: Path) -> list[tuple[Any, ...]]:
    """Publish the 'previous state': 50 customers of SNAPSHOT and one older snapshot."""
    publish_scores(write(scores("2026-01-01", ["OLD"], 0.5), tmp_path / "old.parquet"), target)
    ids = [f"P{i:03d}" for i in range(50)]
    publish_scores(write(scores(SNAPSHOT, ids, 0.1), tmp_path / "prev.parquet"), target)
    before = state(target)
    assert len(before) == 51
    return before


def wait_for_sqlite_mid_write(child: subprocess.Popen) -> None:
    """Return once the child reported two batches inserted (its delete ran before them)."""
    assert child.stdout is not None
    lines = [child.stdout.readline(), child.stdout.readline()]
    assert all(line.strip().isdigit() for line in lines), (lines, child.stderr)


def wait_for_postgres_mid_write(app: str, timeout: float = 60.0) -> None:
    """Return once the child's backend is inserting from its stage into the real table."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(PG_URL, autocommit=True) as con:
        while time.monotonic() < deadline:
            row = con.execute(
                "SELECT query FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'active'",
                (app,),
            ).fetchone()
            if row and row[0].startswith("INSERT INTO"):
                return
            time.sleep(0.005)
    raise AssertionError(f"the publisher {app} never reached its INSERT")


def test_publisher_killed_mid_write_leaves_previous_state(
    target: PublishTarget, tmp_path: Path, big_file: Path
) -> None:
    before = seed(target, tmp_path)
    if target.is_sqlite:
        child = start_publisher(target, big_file)
        wait_for_sqlite_mid_write(child)
    else:
        app = f"churnseg_kill_{uuid.uuid4().hex[:8]}"
        child = start_publisher(target, big_file, f"{target.url}?application_name={app}")
        wait_for_postgres_mid_write(app)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the publisher was killed, not finished"

    assert state(target) == before, "a killed publish leaves the previous snapshot intact"
    if target.is_sqlite:
        assert query(target, "PRAGMA integrity_check") == [("ok",)]
    # Nothing stays locked: the next publish of the same snapshot goes through.
    retry = PublishTarget(target.url, db_schema=target.db_schema, lock_timeout=60)
    assert publish_scores(big_file, retry) == 400_000
    assert query(target, SUMMARY, (SNAPSHOT,))[0][0] == 400_000


def test_two_publishers_of_one_snapshot_serialise(target: PublishTarget, tmp_path: Path) -> None:
    seed(target, tmp_path)
    path = write(big_scores(100_000, 0.7), tmp_path / "same.parquet")
    children = [start_publisher(target, path), start_publisher(target, path)]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip().splitlines()[-1] == "done 100000", out

    concurrent = query(target, SUMMARY, (SNAPSHOT,))
    older = query(target, "SELECT COUNT(*) FROM {schema}.customer_scores WHERE customer_id='OLD'")
    publish_scores(path, target)  # one publish alone, for comparison
    assert concurrent == query(target, SUMMARY, (SNAPSHOT,)), "two publishes equal one"
    assert concurrent[0][0] == 100_000, "the previous 50 rows of the snapshot are replaced"
    assert older == [(1,)], "other snapshots are untouched"
