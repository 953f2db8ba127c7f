"""Extraction from CSV, Parquet, SQLite and PostgreSQL into numbered Parquet copies.

PostgreSQL tests are marked ``postgres`` and use a schema unique to this module, dropped after.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnseg.features import cleaning as c
from churnseg.features.contract import TRANSACTIONS
from churnseg.pipelines import sources
from churnseg.pipelines.config import Config, config_as_dict, redact_url
from churnseg.pipelines.sources import (
    Extracted,
    SourceError,
    connect_engine,
    database_url,
    extract_table,
    read_extracted,
)

PG_URL = os.environ.get("CHURNSEG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "s3cr3t-Pa55word"


def extract(tmp_path: Path, **source: Any) -> tuple[Extracted, pd.DataFrame]:
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path),
            "sample": {"enabled": False},
            "sources": {"transactions": source},
        }
    )
    out = extract_table(
        connect_engine(), "transactions", config.sources["transactions"], config, tmp_path / "raw"
    )
    frame = pd.read_parquet(out.path)  # a verbatim copy has no _row: in source order
    if "_row" in frame.columns:
        frame = frame.sort_values("_row").reset_index(drop=True)
    return out, frame


def _parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return bytes(sink.getvalue())


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_csv_is_copied_as_text_with_row_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", b"cust;ts;amount\nA;2024-01-01;1.5\nB;2024-01-02;007\n")
    out, frame = extract(tmp_path, path=path)
    assert out.rows == 2 and out.rejected == 0 and out.rejects_path is None
    assert frame.to_dict("list") == {
        "cust": ["A", "B"],
        "ts": ["2024-01-01", "2024-01-02"],
        "amount": ["1.5", "007"],  # text as written: conversion happens in cleaning
        "_row": [0, 1],
    }


def test_explicit_delimiter_and_encoding(tmp_path: Path) -> None:
    data = "cust\tcity\tamount\nA\tMünchen\t1\nB\tSão Paulo\t2\n".encode("latin-1")
    path = write(tmp_path / "t.tsv", data)
    _, frame = extract(tmp_path, path=path, delimiter="\t", encoding="latin-1")
    assert frame.city.tolist() == ["München", "São Paulo"]


def test_unreadable_lines_are_rejected_with_their_source_row(tmp_path: Path) -> None:
    data = (
        b"cust,amount\n"
        b"A,1\n"  # row 0
        b"B,caf\xe9\n"  # row 1: not UTF-8
        b"C,3,extra\n"  # row 2: one field too many
        b"D,4\n"  # row 3
        b"E\n"  # row 4: one field missing
        b"F,6\n"  # row 5
    )
    out, frame = extract(tmp_path, path=write(tmp_path / "t.csv", data))
    assert (out.rows, out.rejected) == (6, 3)
    assert frame[["cust", "_row"]].values.tolist() == [["A", 0], ["D", 3], ["F", 5]]
    assert out.rejects_path is not None
    rejects = pd.read_parquet(out.rejects_path).sort_values("source_row")
    assert rejects[["source_row", "reason"]].values.tolist() == [
        [1, c.BAD_ENCODING],
        [2, c.MALFORMED_LINE],
        [4, c.MALFORMED_LINE],
    ]
    texts = [json.loads(r)["text"] for r in rejects.record]
    assert texts[1:] == ["C,3,extra", "E"], "the raw line is kept"
    assert [json.loads(r)["line"] for r in rejects.record] == [3, 4, 6]


def test_a_glob_of_files_is_numbered_across_files(tmp_path: Path) -> None:
    write(tmp_path / "part_b.csv", b"cust,amount\nC,3\n")
    write(tmp_path / "part_a.csv", b"cust,amount\nA,1\nB,x,y\nB,2\n")
    out, frame = extract(tmp_path, path=str(tmp_path / "part_*.csv"))
    assert out.rows == 4 and out.rejected == 1
    assert frame[["cust", "_row"]].values.tolist() == [["A", 0], ["B", 2], ["C", 3]]


def test_parquet_globs_unify_schemas(tmp_path: Path) -> None:
    pq.write_table(pa.table({"cust": ["A", "B"], "amount": [1, 2]}), tmp_path / "p1.parquet")
    pq.write_table(
        pa.table({"cust": ["C"], "amount": [2.5], "note": ["x"]}), tmp_path / "p2.parquet"
    )
    out, frame = extract(tmp_path, path=str(tmp_path / "p*.parquet"))
    assert out.rows == 3
    assert frame.amount.tolist() == [1.0, 2.0, 2.5] and frame._row.tolist() == [0, 1, 2]
    assert frame.note.isna().tolist() == [True, True, False]


def test_one_parquet_file_is_copied_verbatim_and_numbered_on_read(tmp_path: Path) -> None:
    source = tmp_path / "orders.parquet"
    # Written by pyarrow: its float statistics leave the NaN out.
    rows = pa.table({"cust": ["A", "B", "C", "D"], "amount": [1.0, float("nan"), None, 2.0]})
    pq.write_table(rows, source, row_group_size=3)
    out, _ = extract(tmp_path, path=str(source))
    assert out.rows == 4 and out.path.read_bytes() == source.read_bytes()
    con = connect_engine()
    read = read_extracted(con, out.path).to_pyarrow()
    assert read.column_names == ["cust", "amount", "_row"]
    assert read.column("cust").to_pylist() == ["A", "B", "C", "D"]
    assert read.column("_row").to_pylist() == [0, 1, 2, 3]
    table = read_extracted(con, out.path)
    nan = table.filter(table.amount.isnan()).count().execute()
    assert nan == 1, "the NaN is seen (DuckDB folds isnan() to false on pyarrow's statistics)"


def test_a_parquet_file_of_large_row_groups_is_rewritten_with_row_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "VERBATIM_MAX_GROUP_ROWS", 2)
    source = tmp_path / "orders.parquet"
    pq.write_table(pa.table({"cust": ["A", "B", "C"]}), source, row_group_size=3)
    out, frame = extract(tmp_path, path=str(source))
    assert out.path.read_bytes() != source.read_bytes()
    assert frame.to_dict("list") == {"cust": ["A", "B", "C"], "_row": [0, 1, 2]}
    read = read_extracted(connect_engine(), out.path).to_pyarrow()
    assert read.column("_row").to_pylist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("files", "pattern", "message"),
    [
        ({}, "missing_*.csv", r"no file matches .*missing_\*\.csv"),
        ({"empty.csv": b""}, "empty.csv", r"empty\.csv is empty \(0 bytes\)"),
        ({"r.csv": b"_row,cust\n1,A\n"}, "r.csv", r"column named '_row' \(reserved\)"),
        ({"bad.parquet": b"not parquet at all"}, "bad.parquet", r"cannot read .*bad\.parquet"),
        ({"r.parquet": _parquet_bytes({"_row": [1]})}, "r.parquet", r"named '_row' \(reserved\)"),
    ],
)
def test_unreadable_files_raise_source_errors(
    tmp_path: Path, files: dict[str, bytes], pattern: str, message: str
) -> None:
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(SourceError, match=rf"table 'transactions'.*{message}"):
        extract(tmp_path, path=str(tmp_path / pattern))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE orders (cust TEXT, ordered_at TEXT, amount)")
        # SQLite keeps whatever type each value has: the third batch holds text.
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)",
            [("A", "2024-01-01 10:00", 10), ("B", "2024-01-02", 2.5), ("C", "x", "abc")],
        )
    return f"sqlite:///{db}"


def test_sqlite_table_in_batches_with_mixed_types(sqlite_db: str, tmp_path: Path) -> None:
    out, frame = extract(tmp_path, url=sqlite_db, table="orders", batch_rows=1)
    assert out.rows == 3
    assert frame.to_dict("list") == {
        "cust": ["A", "B", "C"],
        "ordered_at": ["2024-01-01 10:00", "2024-01-02", "x"],
        "amount": ["10", "2.5", "abc"],  # int, float and text across batches unify to text
        "_row": [0, 1, 2],
    }


def test_sqlite_query(sqlite_db: str, tmp_path: Path) -> None:
    _, frame = extract(
        tmp_path, url=sqlite_db, query="SELECT cust, amount FROM orders WHERE cust <> 'C'"
    )
    assert frame.to_dict("list") == {"cust": ["A", "B"], "amount": [10.0, 2.5], "_row": [0, 1]}


def test_empty_query_result_keeps_its_columns(sqlite_db: str, tmp_path: Path) -> None:
    out, frame = extract(tmp_path, url=sqlite_db, query="SELECT * FROM orders WHERE 0")
    assert out.rows == 0 and list(frame.columns) == ["cust", "ordered_at", "amount", "_row"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"table": "nope"}, r"no table 'nope' in the database"),
        ({"query": "SELECT * FROM nope"}, r"cannot read: no such table: nope"),
    ],
)
def test_missing_sqlite_table(
    sqlite_db: str, tmp_path: Path, source: dict[str, str], message: str
) -> None:
    with pytest.raises(SourceError, match=rf"table 'transactions' \(sqlite:///.*\): {message}"):
        extract(tmp_path, url=sqlite_db, **source)


def test_urls_are_normalised_and_passwords_hidden() -> None:
    url = f"postgresql://churn:{SECRET}@db:5432/shop"
    assert database_url(url).drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("sqlite:///x.db").drivername == "sqlite"
    assert redact_url(url) == "postgresql://churn:***@db:5432/shop"
    config = Config.model_validate({"sources": {"transactions": {"url": url, "table": "orders"}}})
    shown = json.dumps(config_as_dict(config))
    assert SECRET not in shown and "churn:***@db" in shown, "config show and MLflow lineage"
    assert config.sources["transactions"].url == url, "the password still reaches the driver"
    with pytest.raises(SourceError, match=r"not a database URL: .*churn:\*\*\*@") as error:
        database_url(f"postgresql://churn:{SECRET}@db:no_port/shop")
    assert SECRET not in str(error.value)


def test_unknown_driver_is_a_source_error(tmp_path: Path) -> None:
    url = f"postgresql+nodriver://churn:{SECRET}@db/shop"
    with pytest.raises(SourceError, match=r"cannot use this URL") as error:
        extract(tmp_path, url=url, table="orders")
    assert SECRET not in str(error.value)


def postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}: {exc}"
    return None


@contextmanager
def orders_schema(prefix: str, columns: str, values: str) -> Iterator[str]:
    """A schema of its own with an ``orders`` table (indexed on its first column), dropped after."""
    reason = postgres_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    first = columns.split()[0]
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(f'CREATE TABLE "{schema}".orders ({columns})')
        con.execute(f'CREATE INDEX ON "{schema}".orders ({first})')
        con.execute(f'INSERT INTO "{schema}".orders VALUES {values}')
    try:
        yield schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A schema unique to this module with an ``orders`` table, dropped afterwards."""
    with orders_schema(
        "churnseg_sources",
        "cust_no text, ordered_at timestamptz, net_value numeric(12, 2), qty integer, note text",
        "('A', '2024-01-01 10:00+02', 10.50, 1, NULL), "
        "('B', '2024-07-01 00:30+00', 3.00, NULL, NULL), "
        "('C', '2024-07-02 12:00+00', -2.25, 2, NULL)",
    ) as schema:
        yield schema


@pytest.mark.postgres
def test_postgres_table_conforms_to_utc(pg_schema: str, tmp_path: Path) -> None:
    mapping = {
        "customer_id": "cust_no",
        "timestamp": "ordered_at",
        "amount": "net_value",
        "quantity": "qty",
    }
    out, frame = extract(
        tmp_path, url=PG_URL, table=f"{pg_schema}.orders", batch_rows=2, columns=mapping
    )
    assert out.rows == 3 and frame.cust_no.tolist() == ["A", "B", "C"]
    con = connect_engine()
    conformed = c.conform(con.read_parquet(out.path), TRANSACTIONS, mapping)
    got = conformed.select("customer_id", "timestamp", "amount", "quantity").execute()
    assert got.timestamp.tolist() == [
        pd.Timestamp("2024-01-01 08:00"),  # +02 read as the instant, stored as naive UTC
        pd.Timestamp("2024-07-01 00:30"),
        pd.Timestamp("2024-07-02 12:00"),
    ]
    assert got.amount.tolist() == [10.5, 3.0, -2.25]
    assert got.quantity.tolist()[0] == 1 and pd.isna(got.quantity.tolist()[1])


@pytest.mark.postgres
def test_postgres_query(pg_schema: str, tmp_path: Path) -> None:
    query = f"SELECT cust_no, net_value FROM {pg_schema}.orders WHERE net_value > 0 ORDER BY 1"
    url = PG_URL.replace("postgresql://", "postgresql+psycopg://")
    _, frame = extract(tmp_path, url=url, query=query)
    assert frame.cust_no.tolist() == ["A", "B"] and frame._row.tolist() == [0, 1]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"table": "{schema}.missing"}, r"no table '.*\.missing' in the database"),
        ({"query": "SELECT * FROM {schema}.missing"}, r'cannot read: relation ".*missing"'),
    ],
)
def test_postgres_missing_table(
    pg_schema: str, tmp_path: Path, source: dict[str, str], message: str
) -> None:
    source = {k: v.format(schema=pg_schema) for k, v in source.items()}
    url = PG_URL.replace("postgres@", f"postgres:{SECRET}@")
    with pytest.raises(SourceError, match=message) as error:
        extract(tmp_path, url=url, **source)
    assert SECRET not in str(error.value) and "postgres:***@" in str(error.value)


@pytest.mark.postgres
@pytest.mark.parametrize("where", ["127.0.0.1:1", "127.0.0.1:5432/no_such_database"])
def test_unreachable_database_error_hides_the_password(tmp_path: Path, where: str) -> None:
    url = f"postgresql://postgres:{SECRET}@{where}" + ("" if "/" in where else "/test")
    started = datetime.now(UTC)
    with pytest.raises(SourceError, match=r"table 'transactions' .*cannot read") as error:
        extract(tmp_path, url=url, table="orders")
    text = str(error.value)
    assert SECRET not in text, text
    assert "postgres:***@127.0.0.1" in text, "the location is still named"
    assert (datetime.now(UTC) - started).total_seconds() < 30


# -- intra-day updates: one customer's rows, and who changed since a snapshot -----------------


def scoped_config(tmp_path: Path, **sources: dict[str, Any]) -> Config:
    return Config.model_validate(
        {"state_dir": str(tmp_path), "sample": {"enabled": False}, "sources": sources}
    )


ORDERS_CSV = (
    b"cust,when,value\n"
    b"A,03/01/2026 10:00,1\n"
    b"B,31/12/2025 23:59,2\n"
    b" A ,04/01/2026 08:00,3\n"  # the same customer, padded: cleaning strips it
    b"C,not a date,4\n"
    b"D,05/02/2026 00:00,5\n"
)


def test_a_scoped_extract_copies_only_the_given_customers_with_their_source_rows(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "orders.csv", ORDERS_CSV)
    source = {"path": path, "columns": {"customer_id": "cust"}}
    config = scoped_config(tmp_path, transactions=source)
    out = extract_table(
        connect_engine(), "transactions", config.sources["transactions"], config,
        tmp_path / "raw", customers=["A", "C"],
    )  # fmt: skip
    frame = pd.read_parquet(out.path).sort_values("_row")
    assert frame[["cust", "_row"]].values.tolist() == [["A", 0], [" A ", 2], ["C", 3]]
    assert out.rows == 3 and out.rejected == 0


def test_changed_customers_are_those_with_dated_rows_since_the_snapshot(tmp_path: Path) -> None:
    from churnseg.pipelines.sources import customers_changed_since

    orders = write(tmp_path / "orders.csv", ORDERS_CSV)
    customers = tmp_path / "customers.parquet"
    pd.DataFrame(
        {
            "id": ["A", "B", "E", "F"],
            "signup_date": pd.to_datetime(["2025-01-01", "2025-01-01", "2026-01-02", None]),
        }
    ).to_parquet(customers)
    config = scoped_config(
        tmp_path,
        transactions={
            "path": orders,
            "columns": {"customer_id": "cust", "timestamp": "when"},
            "date_formats": ["%d/%m/%Y %H:%M"],
        },
        customers={"path": str(customers), "columns": {"customer_id": "id"}},
    )
    found = customers_changed_since(config, datetime(2026, 1, 1), datetime(2026, 1, 31))
    # B's order is before the snapshot, C's date does not parse, D's is after the update's
    # moment; E signed up in the window.
    assert found == {"transactions": {"A"}, "customers": {"E"}}


@pytest.fixture()
def pg_accounts() -> Iterator[str]:
    """Integer customer ids and typed timestamps, as a CRM database has them."""
    with orders_schema(
        "churnseg_scoped",
        "account bigint, ordered_at timestamp, amount float8",
        "(1, '2025-12-31 10:00', 5), (2, '2026-01-02 09:00', 7), (2, '2025-06-01 00:00', 1), "
        "(3, '2026-03-01', 2)",
    ) as schema:
        yield schema


@pytest.mark.postgres
@pytest.mark.parametrize("by", ["table", "query"])
def test_postgres_scoped_extract_and_changes_use_the_database_types(
    pg_accounts: str, tmp_path: Path, by: str
) -> None:
    from churnseg.pipelines.sources import customers_changed_since

    where = (
        {"table": f"{pg_accounts}.orders"}
        if by == "table"
        else {"query": f"SELECT account, ordered_at, amount FROM {pg_accounts}.orders"}
    )
    source = {"url": PG_URL, "columns": {"customer_id": "account", "timestamp": "ordered_at"}}
    config = scoped_config(tmp_path, transactions={**source, **where})
    found = customers_changed_since(config, datetime(2026, 1, 1), datetime(2026, 1, 31))
    assert found == {"transactions": {"2"}}, "ids come back as text"
    out = extract_table(
        connect_engine(), "transactions", config.sources["transactions"], config,
        tmp_path / "raw", customers=["2"],
    )  # fmt: skip
    frame = pd.read_parquet(out.path)
    assert sorted(frame["amount"].tolist()) == [1.0, 7.0], "both of account 2's orders"
