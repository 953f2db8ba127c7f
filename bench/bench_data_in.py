"""Benchmark data in: extraction (Parquet, CSV, SQLite, PostgreSQL) and cleaning; time and memory.

Each step runs in a fresh process so peak RSS is the step's own.

Example: python bench/bench_data_in.py --customers 100000 --out /tmp/bench_data_in --postgres
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import peak_rss_mb

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _config(out: Path, kind: str) -> dict[str, object]:
    sample = out / "sample"
    if kind == "parquet":
        tx: dict[str, object] = {"path": str(sample / "transactions.parquet")}
    elif kind == "csv":
        tx = {
            "path": str(out / "csv" / "transactions.csv"),
            "date_formats": ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M"],
        }
    elif kind == "sqlite":
        tx = {"url": f"sqlite:///{out / 'tx.db'}", "table": "transactions"}
    else:
        tx = {"url": PG_URL, "table": "churnseg_bench.transactions"}
    return {
        "state_dir": str(out / f"state_{kind}"),
        "sample": {"enabled": False},
        "sources": {"customers": {"path": str(sample / "customers.parquet")}, "transactions": tx},
        "cleaning": {"now": "2026-01-01", "max_quarantine_share": 1.0},
    }


def _step(config_json: str, step: str) -> None:
    """Run one step in this process and print its figures as JSON."""
    from churnseg.pipelines import stages
    from churnseg.pipelines.config import Config

    config = Config.model_validate(json.loads(config_json))
    paths = stages.run_paths(config, "bench")
    started = time.perf_counter()
    if step == "extract":
        rows = stages.extract_stage(config, paths)["transactions"]
    else:
        rows = stages.clean_stage(config, paths)["transactions"].rows
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": round(seconds, 2), "rss_mb": round(peak_rss_mb())}))


def _load_databases(out: Path, postgres: bool) -> None:
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    table = pq.read_table(out / "sample" / "transactions.parquet")
    frame = table.to_pandas()
    frame["timestamp"] = frame["timestamp"].astype(str)
    (out / "tx.db").unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{out / 'tx.db'}")
    frame.to_sql("transactions", engine, index=False, chunksize=100_000)
    if postgres:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute("DROP SCHEMA IF EXISTS churnseg_bench CASCADE")
            con.execute("CREATE SCHEMA churnseg_bench")
            con.execute(
                "CREATE TABLE churnseg_bench.transactions (order_id text, customer_id text, "
                "timestamp timestamptz, amount double precision, quantity bigint, product text, "
                "category text, channel text, is_return boolean)"
            )
            columns = [
                "order_id",
                "customer_id",
                "timestamp",
                "amount",
                "quantity",
                "product",
                "category",
                "channel",
                "is_return",
            ]
            with con.cursor().copy(
                f"COPY churnseg_bench.transactions ({', '.join(columns)}) FROM STDIN"
            ) as copy:
                for row in frame[columns].itertuples(index=False):
                    copy.write_row(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--postgres", action="store_true", help="also read from PostgreSQL")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        _step(args.config, args.step)
        return 0

    from churnseg.pipelines.sample import SampleSpec, write_sample

    out: Path = args.out
    started = time.perf_counter()
    write_sample(SampleSpec(customers=args.customers, seed=0), out / "sample")
    write_sample(SampleSpec(customers=args.customers, seed=0, file_format="csv"), out / "csv")
    _load_databases(out, args.postgres)
    print(f"setup: {time.perf_counter() - started:.1f} s (sample, CSV copy, database loads)")
    kinds = ["parquet", "csv", "sqlite"] + (["postgres"] if args.postgres else [])
    for kind in kinds:
        config = json.dumps(_config(out, kind))
        for step in ("extract", "clean"):
            cmd = [sys.executable, __file__, "--out", str(out), "--step", step, "--config", config]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{kind:8s} {step:8s} rows={figures['rows']:>11,} "
                f"time={figures['seconds']:>7.2f} s  peak RSS={figures['rss_mb']:>6} MB"
            )
    if args.postgres:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute("DROP SCHEMA IF EXISTS churnseg_bench CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
