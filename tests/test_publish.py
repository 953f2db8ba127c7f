"""Publishing to SQLite and PostgreSQL: replace, idempotence, retention, migrations, run log.

Behaviour tests run on both databases (the ``target`` fixture); PostgreSQL ones are marked
``postgres`` and use a schema unique to this module, dropped afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnseg.pipelines.publish import (
    PublishError,
    PublishTarget,
    ensure_schema,
    latest_snapshot,
    open_sink,
    publish_quarantine,
    publish_scores,
    publish_segment_profiles,
    run_log,
)
from churnseg.pipelines.sinks.schema import (
    CUSTOMER_SCORES,
    SCHEMA_VERSION,
    OutputNames,
)
from churnseg.pipelines.sinks.sqlite import PAGE_CACHE_KIB

PG_URL = os.environ.get("CHURNSEG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reason() -> str | None:
    """Return why the test server cannot be used, or None when it answers."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}: {exc}"
    return None


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A schema unique to the requesting module, dropped when the module is done."""
    reason = postgres_reason()
    if reason:
        pytest.skip(reason)
    schema = f"churnseg_test_{uuid.uuid4().hex[:10]}"
    yield schema
    drop_schema(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> PublishTarget:
    """An empty output database: a fresh SQLite file, or the module's (emptied) PG schema."""
    if request.param == "sqlite":
        return PublishTarget(f"sqlite:///{tmp_path / 'out.db'}", keep_snapshots=3)
    schema = request.getfixturevalue("pg_schema")
    drop_schema(schema)
    return PublishTarget(PG_URL, db_schema=schema, keep_snapshots=3)


def query(target: PublishTarget, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the target; ``{schema}.`` prefixes are dropped for SQLite.

    Dates and timestamps come back as ISO text from both databases, so tests compare one form.
    """
    if target.is_sqlite:
        with sqlite3.connect(target.url.removeprefix("sqlite:///")) as con:
            return con.execute(sql.replace("{schema}.", ""), params).fetchall()
    import psycopg

    with psycopg.connect(PG_URL) as con:
        con.execute("SET TIME ZONE 'UTC'")
        sql = sql.replace("{schema}", f'"{target.db_schema}"').replace("?", "%s")
        rows = con.execute(sql, params).fetchall()
    return [tuple(_iso(v) for v in row) for row in rows]


def _iso(value: Any) -> Any:
    if isinstance(value, date):
        text = value.isoformat()
        return text.replace("+00:00", "Z") if "T" in text else text
    return value


def scores(snapshot: str, ids: list[str], p: float, **extra: Any) -> pd.DataFrame:
    """A scores frame as ``score_stage`` writes it before later issues fill more columns."""
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
            **extra,
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def published(target: PublishTarget) -> list[tuple[Any, ...]]:
    return query(
        target,
        "SELECT snapshot_date, customer_id, churn_probability "
        "FROM {schema}.customer_scores ORDER BY 1, 2",
    )


def test_republishing_a_snapshot_replaces_it_and_keeps_others(
    target: PublishTarget, tmp_path: Path
) -> None:
    first = write(scores("2026-01-01", ["A", "B", "C"], 0.1), tmp_path / "a.parquet")
    again = write(scores("2026-01-01", ["A", "B"], 0.2), tmp_path / "b.parquet")
    other = write(scores("2025-12-01", ["A"], 0.3), tmp_path / "c.parquet")
    assert publish_scores(other, target) == 1
    assert publish_scores(first, target) == 3
    assert publish_scores(again, target) == 2
    expected = [("2025-12-01", "A", 0.3), ("2026-01-01", "A", 0.2), ("2026-01-01", "B", 0.2)]
    assert published(target) == expected
    full = "SELECT * FROM {schema}.customer_scores ORDER BY snapshot_date, customer_id"
    before = query(target, full)
    assert publish_scores(again, target) == 2
    assert query(target, full) == before, "publishing the same file twice gives identical rows"


def test_published_row_has_every_contract_column_with_nulls_for_later_ones(
    target: PublishTarget, tmp_path: Path
) -> None:
    path = write(scores("2026-01-01", ["A"], 0.25, value_tier=["A"]), tmp_path / "s.parquet")
    publish_scores(path, target)
    rows = query(target, "SELECT * FROM {schema}.customer_scores_latest")
    expected = (
        "A", "2026-01-01", 0, "Loyal", "A", None, 0.25, None, None, None, None,
        1, 1, "r", "2026-01-01T00:00:00Z", None, None,
    )  # fmt: skip
    assert rows == [expected], "the view lists the contract columns in contract order"


def test_latest_view_follows_the_newest_snapshot(target: PublishTarget, tmp_path: Path) -> None:
    publish_scores(write(scores("2026-01-08", ["A", "B"], 0.4), tmp_path / "new.parquet"), target)
    publish_scores(write(scores("2026-01-01", ["A"], 0.1), tmp_path / "old.parquet"), target)
    rows = query(target, "SELECT snapshot_date, customer_id FROM {schema}.customer_scores_latest")
    assert sorted(rows) == [("2026-01-08", "A"), ("2026-01-08", "B")]


def test_retention_keeps_the_newest_snapshots(target: PublishTarget, tmp_path: Path) -> None:
    days = ["2026-01-01", "2026-01-08", "2026-01-15", "2026-01-22", "2026-01-29"]
    for i, day in enumerate(days):
        publish_scores(write(scores(day, ["A", "B"], 0.1), tmp_path / f"{i}.parquet"), target)
    kept = query(target, "SELECT DISTINCT snapshot_date FROM {schema}.customer_scores ORDER BY 1")
    assert [d for (d,) in kept] == days[-3:], "keep_snapshots=3 keeps the three newest"


def test_sqlite_publisher_keeps_index_pages_in_a_large_page_cache(tmp_path: Path) -> None:
    # SQLite's 2 MiB default made publishing 1M assignments into their out-of-order owner
    # index re-read pages (README, Performance); the cache is the connection's, so each
    # publisher sets it.
    with open_sink(PublishTarget(f"sqlite:///{tmp_path / 'out.db'}")) as sink:
        rows, _ = sink.query("PRAGMA cache_size")
    assert rows == [(-PAGE_CACHE_KIB,)]


def test_schema_version_is_recorded_once_per_object(target: PublishTarget) -> None:
    assert ensure_schema(target) == SCHEMA_VERSION
    assert ensure_schema(target) == SCHEMA_VERSION, "migrating twice is a no-op"
    rows = query(
        target,
        "SELECT object_name, MAX(version), COUNT(*) FROM {schema}.churnseg_schema "
        "GROUP BY object_name ORDER BY 1",
    )
    # One row per version an object went through (version 3 added the allocation objects,
    # version 4 the feedback and audit tables).
    assert rows == [
        ("api_audit", 4, 1),
        ("customer_assignments", 4, 2),
        ("customer_feedback", 4, 1),
        ("customer_scores", 4, 4),
        ("customer_scores_latest", 4, 3),
        ("data_quarantine", 4, 3),
        ("owner_contact_list", 4, 2),
        ("owner_workload", 4, 2),
        ("pipeline_runs", 4, 3),
        ("segment_profiles", 4, 3),
    ]


def test_configured_table_names_are_used(target: PublishTarget, tmp_path: Path) -> None:
    names = OutputNames(customer_scores="scores_eu", pipeline_runs="runs_eu")
    custom = PublishTarget(target.url, names=names, db_schema=target.db_schema)
    publish_scores(write(scores("2026-01-01", ["A"], 0.5), tmp_path / "s.parquet"), custom)
    assert query(target, "SELECT customer_id FROM {schema}.scores_eu_latest") == [("A",)]


def test_bad_file_leaves_previous_snapshot(target: PublishTarget, tmp_path: Path) -> None:
    publish_scores(write(scores("2026-01-01", ["A", "B"], 0.1), tmp_path / "g.parquet"), target)
    duplicate = write(scores("2026-01-01", ["A", "A"], 0.9), tmp_path / "dup.parquet")
    with pytest.raises(PublishError, match="customer_scores"):
        publish_scores(duplicate, target)
    assert published(target) == [("2026-01-01", "A", 0.1), ("2026-01-01", "B", 0.1)]


def test_null_in_required_column_names_table_column_and_count(
    target: PublishTarget, tmp_path: Path
) -> None:
    frame = scores("2026-01-01", ["A", "B", "C"], 0.1)
    frame["segment_name"] = ["Loyal", None, None]
    with pytest.raises(PublishError) as info:
        publish_scores(write(frame, tmp_path / "n.parquet"), target)
    message = str(info.value)
    assert "customer_scores" in message and "'segment_name'" in message, message
    assert "2 null value(s)" in message, message


def test_missing_required_column_is_named_with_row_count(tmp_path: Path) -> None:
    target = PublishTarget(f"sqlite:///{tmp_path / 'o.db'}")
    path = write(scores("2026-01-01", ["A", "B"], 0.1).drop(columns="run_id"), tmp_path / "m.pq")
    with pytest.raises(
        PublishError, match=r"m\.pq \(2 rows\) lacks required column\(s\) \['run_id'\]"
    ):
        publish_scores(path, target)
    assert not (tmp_path / "o.db").exists(), "nothing is created for an unusable file"


@pytest.mark.parametrize(
    "names",
    [
        {"customer_scores": 'x"; DROP TABLE y; --'},
        {"customer_scores": "Scores"},
        {"segment_profiles": "1profiles"},
        {"pipeline_runs": "a" * 49},
    ],
)
def test_table_names_must_be_plain_identifiers(names: dict[str, str]) -> None:
    with pytest.raises(PublishError, match="not a plain identifier"):
        OutputNames(**names)


def test_schema_name_is_validated_and_postgres_only(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="not a plain identifier"):
        PublishTarget(PG_URL, db_schema="public; DROP SCHEMA x")
    with pytest.raises(PublishError, match="PostgreSQL only"):
        PublishTarget(f"sqlite:///{tmp_path}/x.db", db_schema="ops")
    with pytest.raises(PublishError, match="not supported"):
        PublishTarget("mysql://u@h/db")


def test_segment_profiles_replace_per_snapshot(target: PublishTarget, tmp_path: Path) -> None:
    def profiles(day: str, sizes: list[int]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "snapshot_date": day,
                "segment_id": range(len(sizes)),
                "segment_name": [f"S{i}" for i in range(len(sizes))],
                "size": sizes,
                "share": [s / sum(sizes) for s in sizes],
                "revenue_share": 0.5,
                "churn_rate": None,
                "profile": '{"recency_days": 12.5}',
                "segmentation_model_version": 3,
                "run_id": "r",
            }
        )

    assert publish_segment_profiles(write(profiles("2026-01-01", [3, 1]), tmp_path / "a"), target)
    publish_segment_profiles(write(profiles("2026-01-08", [2, 2]), tmp_path / "b"), target)
    publish_segment_profiles(write(profiles("2026-01-08", [1, 1, 2]), tmp_path / "c"), target)
    rows = query(
        target,
        "SELECT snapshot_date, segment_id, size, share, churn_rate, profile "
        "FROM {schema}.segment_profiles ORDER BY 1, 2",
    )
    assert rows == [
        ("2026-01-01", 0, 3, 0.75, None, '{"recency_days": 12.5}'),
        ("2026-01-01", 1, 1, 0.25, None, '{"recency_days": 12.5}'),
        ("2026-01-08", 0, 1, 0.25, None, '{"recency_days": 12.5}'),
        ("2026-01-08", 1, 1, 0.25, None, '{"recency_days": 12.5}'),
        ("2026-01-08", 2, 2, 0.5, None, '{"recency_days": 12.5}'),
    ]


def quarantine(run_id: str, reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": run_id,
            "table_name": "transactions",
            "source_row": range(len(reasons)),
            "reason": reasons,
            "record": [f'{{"amount": {i}}}' for i in range(len(reasons))],
        }
    )


def test_quarantine_replaces_per_run_and_keeps_newest_runs(tmp_path: Path) -> None:
    target = PublishTarget(f"sqlite:///{tmp_path / 'q.db'}", keep_quarantine_runs=2)
    for i, run in enumerate(["r1", "r2", "r3"]):
        reasons = ["bad_amount"] * (i + 1)
        publish_quarantine(write(quarantine(run, reasons), tmp_path / f"{run}.pq"), target)
        # published_at has one-second resolution: make the run order unambiguous.
        query(target, "UPDATE data_quarantine SET published_at = ? WHERE run_id = ?", (str(i), run))
    again = write(quarantine("r3", ["zero_amount"]), tmp_path / "r3b.pq")
    assert publish_quarantine(again, target) == 1
    rows = query(target, "SELECT run_id, reason, COUNT(*) FROM data_quarantine GROUP BY 1, 2")
    assert sorted(rows) == [("r2", "bad_amount", 2), ("r3", "zero_amount", 1)]


def test_run_log_records_success_and_failure_with_quarantine(
    target: PublishTarget, tmp_path: Path
) -> None:
    with run_log(target, "run-ok", "retrain") as entry:
        entry.rows_read = 10
        entry.rows_quarantined = 1
        entry.snapshot_date = date(2026, 1, 1)
        entry.rows_published = 9
    rows_file = write(quarantine("run-bad", ["bad_amount", "future_timestamp"]), tmp_path / "q")
    with (
        pytest.raises(ValueError, match="too many"),
        run_log(target, "run-bad", "score", rows_file),
    ):
        raise ValueError("too many rows quarantined")
    runs = query(
        target,
        "SELECT run_id, flow, snapshot_date, status, rows_read, rows_quarantined, "
        "rows_published, message, finished_at >= started_at FROM {schema}.pipeline_runs "
        "ORDER BY run_id",
    )
    failure = "ValueError: too many rows quarantined"
    assert runs == [
        ("run-bad", "score", None, "failed", None, 2, None, failure, 1),
        ("run-ok", "retrain", "2026-01-01", "succeeded", 10, 1, 9, None, 1),
    ]
    reasons = query(target, "SELECT reason FROM {schema}.data_quarantine ORDER BY source_row")
    assert reasons == [("bad_amount",), ("future_timestamp",)], "a failed run's quarantine lands"


def test_empty_scores_file_changes_nothing(target: PublishTarget, tmp_path: Path) -> None:
    publish_scores(write(scores("2026-01-01", ["A"], 0.1), tmp_path / "a.parquet"), target)
    empty = write(scores("2026-01-02", [], 0.1), tmp_path / "e.parquet")
    assert publish_scores(empty, target) == 0
    assert latest_snapshot(empty) is None
    assert published(target) == [("2026-01-01", "A", 0.1)]


def test_legacy_sqlite_table_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as con:  # the table as the first release created it
        con.execute(
            'CREATE TABLE "customer_scores" (customer_id TEXT NOT NULL, snapshot_date TEXT NOT '
            "NULL, segment_id INTEGER NOT NULL, segment_name TEXT NOT NULL, churn_probability "
            "REAL NOT NULL, segmentation_model_version INTEGER NOT NULL, churn_model_version "
            "INTEGER NOT NULL, run_id TEXT NOT NULL, scored_at TEXT NOT NULL, "
            "PRIMARY KEY (snapshot_date, customer_id))"
        )
        con.execute(
            "INSERT INTO customer_scores VALUES "
            "('A', '2025-12-01', 1, 'Loyal', 0.3, 1, 1, 'old', '2025-12-01T00:00:00+00:00')"
        )
    target = PublishTarget(f"sqlite:///{db}")
    publish_scores(write(scores("2026-01-01", ["B"], 0.2), tmp_path / "s.parquet"), target)
    rows = query(target, "SELECT customer_id, snapshot_date, value_tier FROM customer_scores")
    assert sorted(rows) == [("A", "2025-12-01", None), ("B", "2026-01-01", None)]
    columns = [r[1] for r in query(target, "PRAGMA table_info(customer_scores)")]
    assert sorted(columns) == sorted(CUSTOMER_SCORES.names)


def test_newer_schema_in_database_is_refused(tmp_path: Path) -> None:
    target = PublishTarget(f"sqlite:///{tmp_path / 'n.db'}")
    ensure_schema(target)
    query(
        target,
        "INSERT INTO churnseg_schema VALUES ('customer_scores', ?, 'from the future', 'now')",
        (SCHEMA_VERSION + 1,),
    )
    path = write(scores("2026-01-01", ["A"], 0.1), tmp_path / "s.parquet")
    with pytest.raises(PublishError, match="newer than this churnseg"):
        publish_scores(path, target)


def test_unpublishable_quarantine_fails_the_run_but_closes_its_log(
    target: PublishTarget, tmp_path: Path
) -> None:
    bad = write(quarantine("run-q", ["bad_amount"]).drop(columns="reason"), tmp_path / "bad.pq")
    missing = r"lacks required column\(s\) \['reason'\]"
    with pytest.raises(PublishError, match=missing), run_log(target, "run-q", "retrain", bad):
        pass
    [(status, message)] = query(
        target, "SELECT status, message FROM {schema}.pipeline_runs WHERE run_id = 'run-q'"
    )
    assert status == "failed"
    assert message.startswith("quarantine not published: publishing bad.pq"), message


publishes = st.lists(
    st.tuples(
        st.integers(0, 5),  # snapshot: day of January 2026
        st.sets(st.sampled_from("ABCDE")),  # customers in the file
        st.sampled_from([0.1, 0.5, 0.9]),  # their churn probability
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(publishes)
def test_database_equals_last_publish_per_snapshot_within_retention(
    steps: list[tuple[int, set[str], float]],
) -> None:
    model: dict[str, list[tuple[str, str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        target = PublishTarget(f"sqlite:///{tmp}/p.db", keep_snapshots=3)
        for i, (day, ids, p) in enumerate(steps):
            snapshot = f"2026-01-{day + 1:02d}"
            path = write(scores(snapshot, sorted(ids), p), Path(tmp) / f"{i}.parquet")
            assert publish_scores(path, target) == len(ids)
            if ids:  # an empty file names no snapshot, so it replaces none
                model[snapshot] = [(snapshot, c, p) for c in sorted(ids)]
            for old in sorted(model)[:-3]:
                del model[old]
        expected = [row for snapshot in sorted(model) for row in model[snapshot]]
        assert published(target) == expected


def test_an_intraday_update_replaces_rows_in_place_and_refreshes_the_allocation_copies(
    target: PublishTarget, tmp_path: Path
) -> None:
    from churnseg.pipelines.publish import AllocationFiles, publish_intraday

    day = "2026-01-01"
    assignments = pd.DataFrame(
        {
            "snapshot_date": day,
            "customer_id": ["A", "B"],
            "owner_id": ["o1", "o2"],
            "reason": "kept",
            "risk_band": "low",
            "churn_probability": 0.1,
            "run_id": "r",
        }
    )
    workload = pd.DataFrame(
        {"snapshot_date": day, "owner_id": ["o1", "o2"], "active": 1, "capacity": 5,
         "accounts": 1, "a_tier_accounts": 0, "high_risk_accounts": 0, "value_at_risk": 0.0,
         "moved_in": 0, "moved_out": 0, "run_id": "r"}
    )  # fmt: skip
    files = AllocationFiles(
        write(assignments, tmp_path / "a.parquet"), write(workload, tmp_path / "w.parquet")
    )
    publish_scores(write(scores(day, ["A", "B"], 0.1), tmp_path / "s.parquet"), target, None, files)
    update = scores(day, ["B", "N"], 0.9, risk_band="high", update_kind="intraday", run_id="u")
    assert publish_intraday(write(update, tmp_path / "u.parquet"), target) == 2
    assert published(target) == [(day, "A", 0.1), (day, "B", 0.9), (day, "N", 0.9)]
    kinds = query(
        target, "SELECT customer_id, update_kind FROM {schema}.customer_scores ORDER BY 1"
    )
    assert kinds == [("A", None), ("B", "intraday"), ("N", "intraday")]
    copies = query(
        target,
        "SELECT customer_id, owner_id, churn_probability, risk_band, run_id "
        "FROM {schema}.customer_assignments ORDER BY 1",
    )
    # B's copy follows its new score; its owner and the allocation's run stay; N has no owner.
    assert copies == [("A", "o1", 0.1, "low", "r"), ("B", "o2", 0.9, "high", "r")]
