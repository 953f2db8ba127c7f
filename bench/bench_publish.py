"""Benchmark publishing and scoring at scale: seconds, rows/s and the score stage's peak memory.

1. Publishes N synthetic scored rows (every contract column filled) to SQLite and to PostgreSQL,
   first into empty tables, then again over the same snapshot (the daily re-run case).
2. Trains the real models on a small generated sample (extract, clean, features, segmentation,
   churn stages, temporary MLflow store), tiles its scoring feature table to N customers, and
   runs ``score_stage`` in a fresh process per chunk size, reporting that process's peak RSS.

Example: python bench/bench_publish.py --rows 1000000 --pg-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from peak_memory import peak_rss_mb

from churnseg.pipelines.publish import PublishTarget, publish_scores
from churnseg.pipelines.sinks.schema import CUSTOMER_SCORES

SNAPSHOT = "2026-03-01"


def synthetic_scores(rows: int, path: Path, seed: int = 0) -> Path:
    """Write ``rows`` scored customers of one snapshot, every column filled, to ``path``."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.5, 4.0, rows)
    value = rng.gamma(2.0, 150.0, rows)
    names = np.array(["Champions", "Loyal", "Big spenders", "Occasional", "Dormant"])
    segment = rng.integers(0, len(names), rows)
    reasons = np.array(
        [
            "no purchase for 94 days, 3.1x their usual gap; spend 365d 12.5 (typical 240)",
            "2 complaints in the last 30 days (typical 0)",
            "",
        ]
    )
    table = pa.table(
        {
            "customer_id": pa.array(np.char.add("C", np.arange(rows).astype(str))),
            "snapshot_date": pa.array(np.full(rows, np.datetime64(SNAPSHOT, "D"))),
            "segment_id": pa.array(segment, pa.int64()),
            "segment_name": pa.array(names[segment]),
            "value_tier": pa.array(np.array(["A", "B", "C"])[rng.integers(0, 3, rows)]),
            "lifecycle_stage": pa.array(
                np.array(["new", "growing", "stable", "declining"])[rng.integers(0, 4, rows)]
            ),
            "churn_probability": pa.array(p),
            "risk_band": pa.array(np.where(p > 0.5, "high", np.where(p > 0.25, "medium", "low"))),
            "top_reasons": pa.array(reasons[rng.integers(0, len(reasons), rows)]),
            "expected_value": pa.array(value),
            "value_at_risk": pa.array(value * p),
            "segmentation_model_version": pa.array(np.full(rows, 3), pa.int64()),
            "churn_model_version": pa.array(np.full(rows, 5), pa.int64()),
            "run_id": pa.array(np.full(rows, uuid.uuid4().hex)),
            "scored_at": pa.array(
                np.full(rows, np.datetime64("2026-03-01T06:00:00", "s")), pa.timestamp("s", "UTC")
            ),
        }
    )
    assert table.schema.names == CUSTOMER_SCORES.names
    pq.write_table(table, path)
    return path


def time_publish(path: Path, target: PublishTarget, rows: int, label: str) -> None:
    for attempt in ("empty table", "same snapshot again"):
        began = time.perf_counter()
        written = publish_scores(path, target)
        seconds = time.perf_counter() - began
        assert written == rows, (written, rows)
        print(f"  {label:<11} {attempt:<20} {seconds:6.1f} s  {rows / seconds:>10,.0f} rows/s")


def bench_sqlite(path: Path, rows: int, folder: Path) -> None:
    target = PublishTarget(f"sqlite:///{folder / 'bench.db'}")
    time_publish(path, target, rows, "SQLite")
    size = (folder / "bench.db").stat().st_size / 1e6
    print(f"  {'':<11} database file {size:,.0f} MB")


def bench_postgres(path: Path, rows: int, url: str) -> None:
    import psycopg

    schema = f"churnseg_bench_{uuid.uuid4().hex[:8]}"
    try:
        time_publish(path, PublishTarget(url, db_schema=schema), rows, "PostgreSQL")
    finally:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def train_champions(folder: Path, customers: int) -> tuple[Path, Path]:
    """Run the real training stages on a generated sample; return (config, scoring features)."""
    import mlflow

    from churnseg.pipelines import stages
    from churnseg.pipelines.config import load_config

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(
        f"state_dir: {folder}\n"
        f"sample: {{customers: {customers}, seed: 7, dirty_fraction: 0.01}}\n"
        "sources:\n"
        '  customers: {path: "{state_dir}/sample/customers.parquet"}\n'
        '  transactions: {path: "{state_dir}/sample/transactions.parquet"}\n'
    )
    config = load_config(config_path, environ={})
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, "train")
    with mlflow.start_run(run_name="bench-train"):
        stages.extract_stage(config, paths)
        stages.clean_stage(config, paths)
        plan = stages.resolve_plan(config, paths)
        stages.feature_stage(config, paths, plan)
        stages.segmentation_stage(config, paths, "bench")
        stages.churn_stage(config, paths)
    return config_path, paths.features / "scoring.parquet"


def tile_features(source: Path, customers: int, target: Path) -> Path:
    """Repeat the rows of a feature table, with fresh customer ids, up to ``customers`` rows."""
    table = pq.read_table(source)
    with pq.ParquetWriter(target, table.schema) as writer:
        written, copy = 0, 0
        while written < customers:
            part = table.slice(0, min(table.num_rows, customers - written))
            ids = np.char.add(f"T{copy}-", np.arange(part.num_rows).astype(str))
            column = part.schema.get_field_index("customer_id")
            field = part.schema.field(column)
            part = part.set_column(column, field, pa.array(ids).cast(field.type))
            writer.write_table(part)
            written += part.num_rows
            copy += 1
    return target


def score_child(config_path: str, features: str, out: str, chunk_rows: str) -> None:
    """Entry of the scoring subprocess: score, then print seconds, rows and peak RSS as JSON."""
    import mlflow

    from churnseg.pipelines import stages
    from churnseg.pipelines.config import PublishConfig, load_config

    config = load_config(config_path, environ={})
    publish = PublishConfig.model_validate(
        {**config.publish.model_dump(), "chunk_rows": int(chunk_rows)}
    )
    config = config.model_copy(update={"publish": publish})
    stages.configure_mlflow(config)
    baseline = peak_rss_mb()
    with mlflow.start_run(run_name="bench-score") as run:
        began = time.perf_counter()
        rows = stages.score_stage(config, Path(features), Path(out), run.info.run_id)
        seconds = time.perf_counter() - began
    report = {"rows": rows, "seconds": seconds, "peak_mb": peak_rss_mb(), "baseline": baseline}
    print(json.dumps(report))


def bench_scoring(folder: Path, customers: int, train_customers: int, chunks: list[int]) -> None:
    began = time.perf_counter()
    config_path, scoring = train_champions(folder, train_customers)
    print(f"  trained on {train_customers:,} customers in {time.perf_counter() - began:.0f} s")
    features = tile_features(scoring, customers, folder / "features_big.parquet")
    size = features.stat().st_size / 1e6
    columns = len(pq.read_schema(features).names)
    print(f"  feature table: {customers:,} customers x {columns} columns, {size:,.0f} MB Parquet")
    for chunk in chunks:
        out = folder / f"scores_{chunk}.parquet"
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--score-child",
                *map(str, (config_path, features, out, chunk)),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"},
        )
        if result.returncode != 0:
            print(result.stderr[-3000:])
            raise SystemExit(f"scoring with chunk_rows={chunk} failed")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"  score_stage chunk_rows={chunk:>9,}: {report['seconds']:6.1f} s, "
            f"{report['rows'] / report['seconds']:>9,.0f} rows/s, peak RSS "
            f"{report['peak_mb']:,.0f} MB (before scoring, after imports: "
            f"{report['baseline']:,.0f} MB)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="scored rows / customers")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "CHURNSEG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL URL (a bench schema is created and dropped); '' to skip",
    )
    parser.add_argument("--skip-score", action="store_true", help="publishing only")
    parser.add_argument("--skip-publish", action="store_true", help="scoring only")
    parser.add_argument("--train-customers", type=int, default=3000, help="sample to train on")
    parser.add_argument("--chunks", default="100000,1000000", help="chunk sizes to score with")
    parser.add_argument("--score-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.score_child:
        score_child(*args.score_child)
        return 0

    with tempfile.TemporaryDirectory(prefix="churnseg-bench-") as tmp:
        folder = Path(tmp)
        if not args.skip_publish:
            print(f"publishing {args.rows:,} scored rows (one snapshot, all 15 columns filled)")
            began = time.perf_counter()
            path = synthetic_scores(args.rows, folder / "scores.parquet")
            print(f"  (synthetic file written in {time.perf_counter() - began:.1f} s)")
            bench_sqlite(path, args.rows, folder)
            if args.pg_url:
                bench_postgres(path, args.rows, args.pg_url)
            print(f"  publisher process peak RSS {peak_rss_mb():,.0f} MB")
        if not args.skip_score:
            print(f"scoring {args.rows:,} customers with the champion models")
            chunks = [int(c) for c in args.chunks.split(",")]
            bench_scoring(folder / "score", args.rows, args.train_customers, chunks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
