from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from churnseg.pipelines.publish import PublishError, publish_scores


def scores(snapshot: str, ids: list[str], p: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ids,
            "snapshot_date": snapshot,
            "segment_id": 0,
            "segment_name": "Loyal",
            "churn_probability": p,
            "segmentation_model_version": 1,
            "churn_model_version": 1,
            "run_id": "r",
            "scored_at": "2026-01-01T00:00:00+00:00",
        }
    )


def rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT snapshot_date, customer_id, churn_probability FROM customer_scores "
            "ORDER BY 1, 2"
        ).fetchall()


def test_republishing_a_snapshot_replaces_it_and_keeps_others(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    url = f"sqlite:///{db}"
    first, again, other = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    scores("2026-01-01", ["A", "B", "C"], 0.1).to_parquet(first)
    scores("2026-01-01", ["A", "B"], 0.2).to_parquet(again)
    scores("2025-12-01", ["A"], 0.3).to_parquet(other)
    assert publish_scores(other, url, "customer_scores") == 1
    assert publish_scores(first, url, "customer_scores") == 3
    assert publish_scores(again, url, "customer_scores") == 2
    assert rows(db) == [
        ("2025-12-01", "A", 0.3),
        ("2026-01-01", "A", 0.2),
        ("2026-01-01", "B", 0.2),
    ]
    publish_scores(again, url, "customer_scores")
    assert len(rows(db)) == 3, "publishing the same snapshot twice is idempotent"


def test_failed_publish_leaves_previous_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    url = f"sqlite:///{db}"
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    scores("2026-01-01", ["A", "B"], 0.1).to_parquet(good)
    broken = scores("2026-01-01", ["A", "A"], 0.9)  # duplicate key fails mid-insert
    broken.to_parquet(bad)
    publish_scores(good, url, "customer_scores")
    with pytest.raises(sqlite3.IntegrityError):
        publish_scores(bad, url, "customer_scores")
    assert rows(db) == [("2026-01-01", "A", 0.1), ("2026-01-01", "B", 0.1)]


def test_table_name_must_be_an_identifier(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    scores("2026-01-01", ["A"], 0.1).to_parquet(path)
    with pytest.raises(PublishError, match="identifier"):
        publish_scores(path, f"sqlite:///{tmp_path}/x.db", 'x"; DROP TABLE y; --')
