"""The warm DuckDB connection: queries compiled once, cutoff queries filled from templates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ibis.backends.duckdb import Backend as DuckDBBackend

from churnseg.features.snapshots import snapshot_literal
from churnseg.features.timeutil import cutoff_literal, days_before
from churnseg.pipelines.config import EngineConfig
from churnseg.pipelines.warm_engine import WarmDuckDB, connect_warm


@pytest.fixture
def warm() -> Iterator[WarmDuckDB]:
    con = connect_warm(EngineConfig())
    yield con
    con.disconnect()


def _events(folder: Path, days: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 1, 1)
    pq.write_table(
        pa.table(
            {
                "customer_id": [f"C{i % 2}" for i in range(len(days))],
                "timestamp": [start + timedelta(days=d) for d in days],
            }
        ),
        folder / "events.parquet",
    )
    return folder / "events.parquet"


def _recency(events: ir.Table, as_of: datetime) -> ir.Table:
    """Days since each customer's last event before ``as_of``, and the snapshot's date."""
    before = events.filter(events.timestamp < cutoff_literal(as_of))
    out = before.group_by("customer_id").aggregate(
        recency=days_before(before.timestamp, as_of).min()
    )
    return out.mutate(snapshot_date=snapshot_literal(as_of)).order_by("customer_id")


def test_two_runs_over_files_of_one_schema_share_their_compiled_sql(
    warm: WarmDuckDB, tmp_path: Path
) -> None:
    first = warm.read_parquet(_events(tmp_path / "run-a" / "clean", [0, 1, 2]))
    query = first.group_by("customer_id").aggregate(n=first.count()).order_by("customer_id")
    assert warm.to_pyarrow(query).column("n").to_pylist() == [2, 1]
    compiled = len(warm._compiled)

    # The next run's file has the same role, so its view has the same name.
    second = warm.read_parquet(_events(tmp_path / "run-b" / "clean", [0, 1, 2, 3, 4]))
    again = second.group_by("customer_id").aggregate(n=second.count()).order_by("customer_id")
    assert warm.to_pyarrow(again).column("n").to_pylist() == [3, 2], "the new file's rows"
    assert len(warm._compiled) == compiled, "compiled once"


@pytest.mark.parametrize(
    "cutoff",
    [
        datetime(2024, 1, 3, 12, 30, 5),
        datetime(2024, 1, 5, 0, 0, 1),
        datetime(2024, 2, 1, 23, 59, 59),
        datetime(2024, 1, 4),  # midnight: the snapshot date is a date, compiled directly
    ],
)
def test_a_cutoff_query_from_its_template_equals_the_query_compiled_at_that_cutoff(
    warm: WarmDuckDB, tmp_path: Path, cutoff: datetime
) -> None:
    events = warm.read_parquet(_events(tmp_path / "clean", [0, 1, 2, 3, 10, 20]))
    sql, schema = warm.cutoff_query("recency", lambda at: _recency(events, at), cutoff)
    template, _ = warm._templates["recency"]
    assert template is not None, "every place the cutoff appears was found"
    direct = _recency(events, cutoff)
    assert sql == DuckDBBackend.compile(warm, direct), "the SQL Ibis writes at that cutoff"
    assert warm.raw_sql(sql).fetchall() == warm.raw_sql(warm.compile(direct)).fetchall()
    assert schema == direct.schema().to_pyarrow()


def test_a_cutoff_used_in_a_form_the_template_does_not_know_is_compiled_each_time(
    warm: WarmDuckDB, tmp_path: Path
) -> None:
    events = warm.read_parquet(_events(tmp_path / "clean", [0, 1, 2, 3, 10, 20]))

    def next_day(at: datetime) -> ir.Table:  # the day after the cutoff, computed in Python
        day = date(at.year, at.month, at.day) + timedelta(days=1)
        return events.filter(events.timestamp < ibis.literal(day)).count().as_table()

    for cutoff, expected in ((datetime(2024, 1, 3, 8), 3), (datetime(2024, 1, 11, 8), 5)):
        sql, _ = warm.cutoff_query("next-day", next_day, cutoff)
        assert warm.raw_sql(sql).fetchall() == [(expected,)]
    assert warm._templates["next-day"][0] is None


def test_every_thread_gets_its_own_connection_and_all_are_closed() -> None:
    import threading

    from churnseg.pipelines.warm_engine import WarmConnections

    pool = WarmConnections(EngineConfig())
    got: list[WarmDuckDB] = []
    workers = [threading.Thread(target=lambda: got.append(pool.get())) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert got[0] is not got[1], "a run re-points its views: threads must not share them"
    pool.close()
    for con in got:
        with pytest.raises(Exception, match=r"(?i)closed"):
            con.raw_sql("SELECT 1")
