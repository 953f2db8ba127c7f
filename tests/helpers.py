"""Small builders for hand-checkable tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TX_COLUMNS = ["order_id", "customer_id", "timestamp", "amount", "is_return"]


def transactions(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Rows of (order_id, customer_id, timestamp, amount, is_return)."""
    frame = pd.DataFrame(rows, columns=TX_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("datetime64[us]")
    frame["amount"] = frame["amount"].astype("float64")
    frame["is_return"] = frame["is_return"].astype("bool")
    frame["customer_id"] = frame["customer_id"].astype("string")
    frame["order_id"] = frame["order_id"].astype("string")
    return frame


def customers(rows: list[tuple[str, str | None]]) -> pd.DataFrame:
    """Rows of (customer_id, signup_date)."""
    frame = pd.DataFrame(rows, columns=["customer_id", "signup_date"])
    frame["signup_date"] = pd.to_datetime(frame["signup_date"]).astype("datetime64[us]")
    frame["customer_id"] = frame["customer_id"].astype("string")
    return frame


def table(frame: pd.DataFrame) -> ir.Table:
    """Return ``frame`` as an in-memory Ibis table on a fresh DuckDB connection."""
    return ibis.duckdb.connect().create_table("t", frame)


def run(expr: ir.Table, key: str = "customer_id") -> pd.DataFrame:
    """Execute ``expr`` and return it sorted by ``key`` with a fresh index."""
    return expr.execute().sort_values(key).reset_index(drop=True)


SAMPLE_TABLES = ("customers", "transactions", "events", "subscriptions")


def write_tables(folder: Path, tables: Mapping[str, pa.Table]) -> None:
    """Write the four sample tables as ``folder/<name>.parquet`` (a stand-in clean stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_TABLES:
        pq.write_table(tables[name], folder / f"{name}.parquet")
