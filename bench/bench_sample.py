"""Benchmark the synthetic sample generator: wall time, peak RSS and row counts.

Example: python bench/bench_sample.py --customers 1000000 --out /tmp/sample_1m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from peak_memory import peak_rss_mb

from churnseg.pipelines.sample import SampleSpec, write_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000, help="number of customers")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--dirty-fraction", type=float, default=0.01, help="dirty row share")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)

    spec = SampleSpec(
        customers=args.customers,
        seed=args.seed,
        dirty_fraction=args.dirty_fraction,
        file_format=args.format,
    )
    began = time.perf_counter()
    paths = write_sample(spec, args.out)
    elapsed = time.perf_counter() - began

    manifest = json.loads(paths["manifest"].read_text())
    print(f"customers:     {args.customers:,} ({args.format}, seed {args.seed})")
    print(f"wall time:     {elapsed:.1f} s")
    print(f"peak RSS:      {peak_rss_mb():,.0f} MB")
    for name, rows in manifest["row_counts"].items():
        size_mb = paths[name].stat().st_size / 1e6
        print(f"  {name:<14} {rows:>12,} rows  {size_mb:>9.1f} MB")
    for name, kinds in manifest["dirty_rows"].items():
        print(f"  dirty {name:<14} {sum(kinds.values()):>8,}  {kinds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
