"""Customer-ordered copies of file sources: the same rows as filtering the files, kept current."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnseg.pipelines.config import Config
from churnseg.pipelines.keyed_files import KeyedSources
from churnseg.pipelines.sources import SourceError, extract_sources

TABLES = ("customers", "transactions")


def _config(tmp_path: Path, transactions: str) -> Config:
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sample": {"enabled": False},
            "sources": {
                "customers": {"path": str(tmp_path / "customers.csv")},
                "transactions": {"path": transactions},
            },
        }
    )


def _orders(customers: list[str], start: int, amount: float = 10.0) -> pa.Table:
    n = len(customers)
    return pa.table(
        {
            "order_id": [f"O{start + i}" for i in range(n)],
            "customer_id": customers,
            "timestamp": pd.date_range("2024-01-01", periods=n) + pd.Timedelta(start, "h"),
            "amount": [amount + i for i in range(n)],
        }
    )


@pytest.fixture
def files(tmp_path: Path) -> Config:
    """Customers as CSV (an id padded with spaces, a line that does not split); orders as two
    Parquet files of one glob, one of them with a NaN amount, in no customer order."""
    (tmp_path / "customers.csv").write_text(
        "customer_id,signup_date\nC2,2023-05-01\n  C1 ,2023-01-01\nC3,2023-02-01,extra,fields\n"
        "C4,2023-03-01\n"
    )
    pq.write_table(_orders(["C2", "C1", " C1", "C4", "C2", None], 0), tmp_path / "tx-1.parquet")
    second = _orders(["C4", "C1", "C9"], 100).set_column(
        3, "amount", pa.array([1.0, float("nan"), 3.0])
    )
    pq.write_table(second, tmp_path / "tx-2.parquet")
    return _config(tmp_path, str(tmp_path / "tx-*.parquet"))


def _read(folder: Path, table: str) -> pd.DataFrame:
    frame = pq.read_table(folder / f"{table}.parquet").to_pandas()
    return frame.sort_values("_row").reset_index(drop=True)


@pytest.mark.parametrize("customers", [["C1"], ["C1", "C4", "C2"], ["C9", "nobody"], []])
def test_keyed_copies_give_the_rows_filtering_every_file_gives(
    files: Config, tmp_path: Path, customers: list[str]
) -> None:
    keyed = KeyedSources(files, TABLES)
    rows = keyed.extract(tmp_path / "keyed", customers)
    expected = extract_sources(files, tmp_path / "scan", customers)
    assert rows == expected
    for table in TABLES:
        pd.testing.assert_frame_equal(
            _read(tmp_path / "keyed", table), _read(tmp_path / "scan", table), check_dtype=False
        )
    if customers == ["C1"]:  # the padded ids are found, in both files
        assert len(_read(tmp_path / "keyed", "transactions")) == 3
        assert _read(tmp_path / "keyed", "customers")["customer_id"].tolist() == ["  C1 "]


def test_a_nan_amount_read_through_a_copy_is_still_seen_as_nan(
    files: Config, tmp_path: Path
) -> None:
    # pyarrow's statistics leave NaN out, and DuckDB 2.0 then folds isnan() to false.
    KeyedSources(files, TABLES).extract(tmp_path / "keyed", ["C1"])
    found = duckdb.sql(
        f"SELECT count(*) FROM '{tmp_path / 'keyed' / 'transactions.parquet'}' WHERE isnan(amount)"
    ).fetchall()
    assert found == [(1,)]


def test_a_changed_file_is_copied_again_and_a_new_file_alone(files: Config, tmp_path: Path) -> None:
    keyed = KeyedSources(files, TABLES)
    keyed.refresh()
    folder = files.state_dir / "keyed" / "transactions"
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.arrow")}
    assert len(first) == 2

    pq.write_table(_orders(["C2"], 200, amount=77.0), tmp_path / "tx-3.parquet")
    assert keyed.extract(tmp_path / "out", ["C2"])["transactions"] == 3
    after_new = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.arrow")}
    assert len(after_new) == 3 and all(after_new[name] == t for name, t in first.items())
    assert 77.0 in set(_read(tmp_path / "out", "transactions")["amount"])

    # Rewriting a file (another size and time) replaces its copy; the old one is deleted.
    pq.write_table(_orders(["C2", "C2"], 300, amount=55.0), tmp_path / "tx-1.parquet")
    os.utime(tmp_path / "tx-1.parquet", ns=(1, 1))
    keyed.extract(tmp_path / "out", ["C2"])
    amounts = sorted(_read(tmp_path / "out", "transactions")["amount"])
    assert amounts == [55.0, 56.0, 77.0]
    assert len(list(folder.glob("*.arrow"))) == 3

    # A new process reuses the copies on disk instead of building them again.
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.arrow")}
    KeyedSources(files, TABLES).refresh()
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.arrow")} == before


def test_database_sources_are_read_from_the_database(files: Config, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE customers (customer_id TEXT, signup_date TEXT)")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?)", [("C1", "2023-01-01"), ("C2", "2023-02-01")]
        )
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sample": {"enabled": False},
            "sources": {
                "customers": {"url": f"sqlite:///{db}", "table": "customers"},
                "transactions": files.sources["transactions"].model_dump(),
            },
        }
    )
    keyed = KeyedSources(config, TABLES)
    assert keyed.extract(tmp_path / "out", ["C2"]) == {"customers": 1, "transactions": 2}
    assert sorted(p.name for p in (tmp_path / "state" / "keyed").iterdir()) == ["transactions"]
    # The database's connection pool stays open for the next rescore, and closes with it.
    (pool,) = keyed._engines.kept()
    assert keyed.extract(tmp_path / "out", ["C1"]) == {"customers": 1, "transactions": 3}
    assert keyed._engines.kept() == [pool]
    keyed.close()
    assert keyed._engines.kept() == []


def test_database_reads_do_not_wait_for_each_other(
    files: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rescores reading a database source at once both get in: no lock held over reads."""
    import sqlite3
    import threading

    from churnseg.pipelines import keyed_files

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE customers (customer_id TEXT, signup_date TEXT)")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?)", [("C1", "2023-01-01"), ("C2", "2023-02-01")]
        )
    sources = {
        "customers": {"url": f"sqlite:///{db}", "table": "customers"},
        "transactions": files.sources["transactions"].model_dump(),
    }
    config = Config.model_validate(
        {"state_dir": str(tmp_path / "state"), "sample": {"enabled": False}, "sources": sources}
    )
    keyed = KeyedSources(config, TABLES)
    both_reading = threading.Barrier(2, timeout=20)
    real = keyed_files.extract_table

    def meeting(*args: Any, **kwargs: Any) -> Any:
        both_reading.wait()  # breaks (and raises) when the other read cannot start meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(keyed_files, "extract_table", meeting)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda c: keyed.extract(tmp_path / c, [c]), ["C1", "C2"]))
    assert [d["customers"] for d in done] == [1, 1]
    assert len(keyed._engines.kept()) == 1, "one pool for the one database"
    keyed.close()


def test_an_unreadable_file_is_a_source_error_and_leaves_no_partial_copy(
    files: Config, tmp_path: Path
) -> None:
    (tmp_path / "tx-3.parquet").write_bytes(b"PAR1 not really parquet")
    keyed = KeyedSources(files, TABLES)
    with pytest.raises(SourceError, match=r"table 'transactions': cannot read .*tx-3.parquet"):
        keyed.extract(tmp_path / "out", ["C1"])
    folder = files.state_dir / "keyed" / "transactions"
    left = sorted(p.name.split(".", 1)[1] for p in folder.iterdir())
    assert left == ["arrow", "arrow", "keys.parquet", "keys.parquet"], "the two good files' copies"
