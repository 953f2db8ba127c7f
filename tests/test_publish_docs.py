"""docs/output_tables.md: every column documented, every example query runs and answers right."""

from __future__ import annotations

import re
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from churnseg.pipelines.publish import (
    PublishTarget,
    publish_scores,
    publish_segment_profiles,
    run_log,
)
from churnseg.pipelines.sinks.schema import TABLES
from tests.test_publish import PG_URL, _iso, pg_schema, quarantine, scores, target, write

__all__ = ["pg_schema", "target"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "output_tables.md"
QUERY = re.compile(
    r"<!-- query: (?P<name>[\w-]+) (?P<dialect>sqlite|postgresql) -->\s*```sql\n(?P<sql>.*?)```",
    re.DOTALL,
)
REQUIRED = {"latest-scores", "high-risk-high-value", "segment-movement"}


def doc_queries() -> dict[tuple[str, str], str]:
    return {(m["name"], m["dialect"]): m["sql"] for m in QUERY.finditer(DOC.read_text())}


def test_docs_describe_every_column_of_every_table() -> None:
    text = DOC.read_text()
    for spec in TABLES:
        start = text.index(f"## `{spec.key}`")
        section = text[start : text.find("\n## ", start + 1)]
        undocumented = [c for c in spec.names if f"| `{c}` |" not in section]
        assert not undocumented, f"{spec.key}: {undocumented} missing from its docs table"


def test_every_example_query_is_given_for_both_databases() -> None:
    queries = doc_queries()
    sqlite_names = {name for name, dialect in queries if dialect == "sqlite"}
    postgres_names = {name for name, dialect in queries if dialect == "postgresql"}
    assert sqlite_names == postgres_names
    assert sqlite_names >= REQUIRED


# (customer, segment, value tier, churn probability, risk band, value at risk) per snapshot
NEWEST = [
    ("C1", "Champions", "A", 0.8, "high", 400.0),
    ("C2", "Champions", "A", 0.7, "high", 140.0),
    ("C3", "Champions", "B", 0.9, "high", 90.0),
    ("C4", "At risk", "A", 0.6, "high", 300.0),
    ("C5", "At risk", "A", 0.2, "low", 20.0),
    ("C6", "Loyal", "C", 0.1, "low", 1.0),
]
WEEK_BEFORE = ["Champions", "Loyal", "Champions", "Champions", "Loyal", "Loyal"]


def snapshot(day: str, rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    ids, segments, tiers, p, bands, var = map(list, zip(*rows, strict=True))
    frame = scores(day, ids, 0.0, segment_name=segments, value_tier=tiers, risk_band=bands)
    frame["churn_probability"] = p
    frame["value_at_risk"] = var
    return frame


def seed(target: PublishTarget, tmp_path: Path) -> None:
    """Three snapshots (a week apart, and one in between), profiles, a run log, a quarantine."""
    ids = [r[0] for r in NEWEST]
    old = [(i, s, "B", 0.3, None, None) for i, s in zip(ids, WEEK_BEFORE, strict=True)]
    middle = [(i, "Dormant", "C", 0.5, None, None) for i in ids]
    for day, rows in [("2026-01-01", old), ("2026-01-05", middle), ("2026-01-08", NEWEST)]:
        publish_scores(write(snapshot(day, rows), tmp_path / f"{day}.parquet"), target)
    for day, recency in [("2026-01-01", [30.0, 90.0]), ("2026-01-08", [12.5, 80.0])]:
        profiles = pd.DataFrame(
            {
                "snapshot_date": day,
                "segment_id": [0, 1],
                "segment_name": ["Champions", "At risk"],
                "size": [3, 2],
                "share": [0.6, 0.4],
                "revenue_share": [0.9, 0.1],
                "churn_rate": [0.1, 0.5],
                "profile": [f'{{"recency_days": {r}}}' for r in recency],
                "segmentation_model_version": 2,
                "run_id": "run-2",
            }
        )
        publish_segment_profiles(write(profiles, tmp_path / f"p{day}.parquet"), target)
    reasons = ["bad_amount", "bad_amount", "future_timestamp"]
    with run_log(target, "run-2", "retrain", write(quarantine("run-2", reasons), tmp_path / "q")):
        pass


def run(target: PublishTarget, sql: str) -> list[tuple[Any, ...]]:
    if target.is_sqlite:
        with sqlite3.connect(target.url.removeprefix("sqlite:///")) as con:
            return con.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(PG_URL) as con:
        con.execute(f'SET search_path TO "{target.db_schema}"')
        return [tuple(_iso(v) for v in row) for row in con.execute(sql).fetchall()]


def test_example_queries_run_and_answer(target: PublishTarget, tmp_path: Path) -> None:
    seed(target, tmp_path)
    dialect = "sqlite" if target.is_sqlite else "postgresql"
    answers = {name: run(target, sql) for (name, d), sql in doc_queries().items() if d == dialect}

    by_risk = sorted(NEWEST, key=lambda r: -r[3])
    assert answers["latest-scores"] == by_risk
    assert answers["high-risk-high-value"] == [
        ("At risk", "C4", 0.6, 300.0),
        ("Champions", "C1", 0.8, 400.0),
        ("Champions", "C2", 0.7, 140.0),
    ], "risk band high and tier A, ranked by value at risk within each segment"
    assert answers["segment-movement"] == [
        ("Champions", "At risk", 1),
        ("Loyal", "At risk", 1),
        ("Loyal", "Champions", 1),
    ], "compared with 2026-01-01, not with the 2026-01-05 snapshot in between"
    assert answers["customer-history"] == [
        ("2026-01-01", "Loyal", 0.3, None),
        ("2026-01-05", "Dormant", 0.5, None),
        ("2026-01-08", "Champions", 0.7, "high"),
    ]
    assert answers["segment-profiles"] == [
        (0, "Champions", 3, 0.6, 0.9, 0.1, 12.5),
        (1, "At risk", 2, 0.4, 0.1, 0.5, 80.0),
    ]
    [latest_run] = answers["recent-runs"]
    assert latest_run[:4] == ("run-2", "retrain", None, "succeeded")
    assert latest_run[6:] == (None, 3, None, None), "rows_quarantined from the published file"
    assert answers["quarantine-reasons"] == [
        ("transactions", "bad_amount", 2),
        ("transactions", "future_timestamp", 1),
    ]
    assert date.fromisoformat(latest_run[4][:10]) >= date(2026, 1, 1)
