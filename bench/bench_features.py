"""Benchmark the feature build on generated samples: wall time and peak memory per size.

For each size: the full ``build_features`` table (every family, written to Parquet as the
feature stage does) plus the BG/NBD and Gamma-Gamma fit and prediction on its summary; and the
RFM subset twice, as ``behaviour.rfm_features`` (Ibis) and as a hand-written DuckDB SQL query
computing the same columns, timed alternately in the same run (median of ``--repeats``).
Every measurement runs in a fresh process so its peak RSS is its own.

Example: python bench/bench_features.py --sizes 100000 1000000
Samples are generated once into ``--cache`` (1M customers: about 23M transaction lines and 10M
events, 50 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from peak_memory import peak_rss_mb

AS_OF = date(2026, 1, 1)  # the generator's "today": the scoring cutoff of a run
TABLES = ("customers", "transactions", "events", "subscriptions")


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def ensure_sample(cache: Path, customers: int, seed: int) -> Path:
    from churnseg.pipelines.sample import SampleSpec, write_sample

    folder = cache / f"{customers}_{seed}"
    if not (folder / "manifest.json").exists():
        write_sample(SampleSpec(customers=customers, seed=seed, dirty_fraction=0.0), folder)
    return folder


def rfm_sql(folder: Path, windows: tuple[int, ...]) -> str:
    """The RFM subset of ``rfm_features`` written by hand in DuckDB SQL (same algorithm)."""
    cutoff = f"TIMESTAMP '{AS_OF.isoformat()} 00:00:00'"
    age = f"(epoch({cutoff}) - epoch(ts)) / 86400.0"
    window_aggs = ",\n".join(
        f"count(*) FILTER (WHERE NOT is_return AND age <= {w}) AS orders_{w}d, "
        f"sum(value) FILTER (WHERE age <= {w}) AS spend_{w}d"
        for w in windows
    )
    window_cols = ",\n".join(
        f"coalesce(orders_{w}d, 0) AS orders_{w}d, "
        f"coalesce(CAST(spend_{w}d AS DOUBLE), 0.0) AS spend_{w}d"
        for w in windows
    )
    return f"""
WITH orders AS (
    SELECT customer_id, min(timestamp) AS ts,
           CAST(sum(CAST(amount AS DECIMAL(18, 4))) AS DECIMAL(18, 4)) AS value,
           bool_and(is_return) AS is_return
    FROM read_parquet('{folder / "transactions.parquet"}')
    WHERE timestamp < {cutoff}
    GROUP BY customer_id, order_id, CASE WHEN order_id IS NULL THEN timestamp END
), aged AS (
    SELECT *, {age} AS age FROM orders
), agg AS (
    SELECT customer_id, min(ts) AS first_ts,
           count(*) FILTER (WHERE NOT is_return) AS frequency,
           count(*) AS n_orders,
           count(*) FILTER (WHERE is_return) AS returns,
           min(age) FILTER (WHERE NOT is_return) AS last_purchase_days,
           sum(value) AS monetary_total,
           max(value) FILTER (WHERE NOT is_return) AS monetary_max,
           {window_aggs}
    FROM aged GROUP BY customer_id
), known AS (
    SELECT customer_id, min(ts) AS start_ts FROM (
        SELECT customer_id, CAST(signup_date AS TIMESTAMP) AS ts
        FROM read_parquet('{folder / "customers.parquet"}')
        UNION ALL SELECT customer_id, first_ts FROM agg
    ) GROUP BY customer_id HAVING min(ts) < {cutoff}
), joined AS (
    SELECT k.customer_id, (epoch({cutoff}) - epoch(k.start_ts)) / 86400.0 AS tenure, a.*
    FROM known k LEFT JOIN agg a ON k.customer_id = a.customer_id
)
SELECT customer_id,
       coalesce(last_purchase_days, tenure) AS recency_days,
       coalesce(frequency, 0) AS frequency,
       coalesce(CAST(monetary_total AS DOUBLE), 0.0) AS monetary_total,
       CASE WHEN coalesce(frequency, 0) > 0
            THEN coalesce(CAST(monetary_total AS DOUBLE), 0.0) / frequency ELSE 0.0 END
           AS monetary_mean,
       coalesce(CAST(monetary_max AS DOUBLE), 0.0) AS monetary_max,
       CASE WHEN coalesce(n_orders, 0) > 0 THEN coalesce(returns, 0) / n_orders ELSE 0.0 END
           AS return_rate,
       tenure AS tenure_days,
       {window_cols}
FROM joined
"""


def task(kind: str, folder: str, out: str) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; return its figures."""
    import pyarrow.parquet as pq

    from churnseg.features.behaviour import rfm_features
    from churnseg.features.btyd import SUMMARY, btyd_features
    from churnseg.features.build import build_features
    from churnseg.pipelines.config import FeatureConfig
    from churnseg.pipelines.sources import connect_engine

    con = connect_engine()
    files = {name: str(Path(folder) / f"{name}.parquet") for name in TABLES}
    config = FeatureConfig()
    result: dict[str, Any] = {}
    began = time.perf_counter()
    if kind == "full":
        tables = {name: con.read_parquet(path) for name, path in files.items()}
        con.to_parquet(build_features(tables, AS_OF, config), out)
        result["ibis_s"] = time.perf_counter() - began
        fit_began = time.perf_counter()
        summary = pq.read_table(out, columns=list(SUMMARY)).to_pandas()
        _, bgnbd, gamma = btyd_features(summary, 90, config.btyd_period_days)
        result["btyd_s"] = time.perf_counter() - fit_began
        result["btyd_params"] = {
            **(bgnbd.params_ if bgnbd else {}),
            **(gamma.params_ if gamma else {}),
        }
    elif kind == "rfm_ibis":
        tx, cu = con.read_parquet(files["transactions"]), con.read_parquet(files["customers"])
        con.to_parquet(rfm_features(tx, cu, AS_OF, config.windows), out)
    elif kind == "rfm_sql":
        query = rfm_sql(Path(folder), config.windows)
        con.raw_sql(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
    else:
        raise ValueError(kind)
    result["seconds"] = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds (both cores) include imports; on a shared machine they vary less than wall time.
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mb"] = peak_rss_mb()
    meta = pq.read_metadata(out)
    result["rows"], result["columns"] = meta.num_rows, meta.num_columns
    return result


def measure(kind: str, folder: Path, out: Path) -> dict[str, Any]:
    """Run ``task`` in a fresh spawned process (its own peak RSS, no warm caches)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(task, (kind, str(folder), str(out)))


def same_rfm(ibis_file: Path, sql_file: Path) -> bool:
    """Return whether the Ibis and hand-written RFM tables agree (floats to 1e-9)."""
    import pandas as pd

    a = pd.read_parquet(ibis_file).sort_values("customer_id").reset_index(drop=True)
    b = pd.read_parquet(sql_file).sort_values("customer_id").reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(a, b[a.columns], check_dtype=False, rtol=1e-9)
    except AssertionError as exc:
        print(f"  RFM MISMATCH: {str(exc)[:300]}")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="RFM timings (median)")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "churnseg_bench"
    )
    args = parser.parse_args(argv)

    report = []
    for n in args.sizes:
        began = time.perf_counter()
        folder = ensure_sample(args.cache, n, args.seed)
        manifest = json.loads((folder / "manifest.json").read_text())
        counts = manifest["row_counts"]
        print(
            f"\n{n:,} customers (load average {_load()}): "
            f"{counts['transactions']:,} transaction lines, "
            f"{counts['events']:,} events, {counts['subscriptions']:,} subscriptions "
            f"(sample ready in {time.perf_counter() - began:.0f} s)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            full = measure("full", folder, out / "full.parquet")
            print(
                f"  full build: {full['seconds']:6.1f} s  peak {full['peak_rss_mb']:,.0f} MB  "
                f"cpu {full['cpu_s']:.0f} s  ({full['rows']:,} rows x {full['columns']} columns; "
                f"Ibis/DuckDB {full['ibis_s']:.1f} s, BG/NBD + Gamma-Gamma fit and predict "
                f"{full['btyd_s']:.1f} s)"
            )
            print("  BTYD parameters:", {k: round(v, 4) for k, v in full["btyd_params"].items()})
            ibis_runs, sql_runs = [], []
            for _ in range(args.repeats):
                ibis_runs.append(measure("rfm_ibis", folder, out / "rfm_ibis.parquet"))
                sql_runs.append(measure("rfm_sql", folder, out / "rfm_sql.parquet"))
            agree = same_rfm(out / "rfm_ibis.parquet", out / "rfm_sql.parquet")
        ibis_s = statistics.median(r["seconds"] for r in ibis_runs)
        sql_s = statistics.median(r["seconds"] for r in sql_runs)
        ibis_cpu = statistics.median(r["cpu_s"] for r in ibis_runs)
        sql_cpu = statistics.median(r["cpu_s"] for r in sql_runs)
        ibis_peak = max(r["peak_rss_mb"] for r in ibis_runs)
        sql_peak = max(r["peak_rss_mb"] for r in sql_runs)
        runs = " ".join(f"{r['seconds']:.2f}" for r in ibis_runs)
        runs += " | " + " ".join(f"{r['seconds']:.2f}" for r in sql_runs)
        print(
            f"  RFM subset: Ibis {ibis_s:5.2f} s (peak {ibis_peak:,.0f} MB)  hand-written SQL "
            f"{sql_s:5.2f} s (peak {sql_peak:,.0f} MB)  ratio {ibis_s / sql_s:.2f}  "
            f"[runs {runs}]  same result: {agree}"
        )
        print(
            f"  RFM subset CPU: Ibis {ibis_cpu:.1f} s, SQL {sql_cpu:.1f} s, "
            f"ratio {ibis_cpu / sql_cpu:.2f}  (load average {_load()})"
        )
        report.append((n, full, ibis_s, sql_s))
    if len(report) > 1:
        (n0, f0, *_), (n1, f1, *_) = report[0], report[-1]
        growth = f1["seconds"] / f0["seconds"]
        print(f"\nfull build grows {growth:.1f}x for {n1 / n0:.0f}x the customers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
