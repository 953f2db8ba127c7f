"""Intra-day benchmark: ``score --changed`` and ``churnseg api`` with a million customers published.

1. Trains the champions on a small sample (``--train-customers``), then publishes a full score
   of ``--customers`` customers (the sample generator's shape: about 20 transaction lines and 10
   events each) with allocation, to SQLite, from Parquet sources.
2. Adds one new order dated after the snapshot for ``--changed-share`` of the customers (a
   second transactions file beside the first), then times ``score --changed`` and, on the same
   data, a full ``score``: both flows in one warm process (Prefect's temporary server already
   up), and the ``churnseg score --changed`` command as a user runs it (process start included).
3. Starts ``churnseg api`` on loopback and drives it from a second process with
   ``--clients`` concurrent keep-alive connections, each sending its next request when the last
   answered (a bounded request loop), for ``--gets`` reads of random customers and then
   ``--rescores`` rescores of random customers; prints p50, p95, p99 and throughput.

The first rescore after the API starts waits for the keyed copies of the file sources
(``keyed_files``) and the models; it is printed apart. One batch of ``--clients`` rescores
then warms the compiled queries; neither is counted in the percentiles.

Targets (issue 20): GET p95 <= 20 ms and POST rescore p95 <= 500 ms at 32 concurrent clients;
``score --changed`` for 1% of customers <= 30 s.

With ``--postgres`` the four feature tables are then loaded into PostgreSQL (``PG_URL``, each
with an index on ``customer_id``) and the API part runs again reading them from there.

Example: python bench/bench_api.py --customers 1000000 --clients 32 [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef0123"
TABLES = ("customers", "transactions", "events", "subscriptions", "owners", "assignments")


def ensure_sample(cache: Path, customers: int, seed: int) -> Path:
    """Generate the sample once per size and seed (the generator's default shape)."""
    from churnseg.pipelines.sample import SampleSpec, write_sample

    folder = cache / f"pipeline_{customers}_{seed}"
    if not (folder / "manifest.json").exists():
        write_sample(SampleSpec(customers=customers, seed=seed, dirty_fraction=0.01), folder)
    return folder


def write_config(work: Path, data: Path, name: str) -> Path:
    """Write a config over ``data`` (transactions as a glob) into ``work``; return its path."""
    config = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    config["state_dir"] = str(work)
    config["sample"] = {"enabled": False}
    config["sources"] = {t: {"path": str(data / f"{t}.parquet")} for t in TABLES}
    config["sources"]["transactions"]["path"] = str(data / "transactions*.parquet")
    config["snapshots"]["max_train_cutoffs"] = 2
    path = work / name
    path.write_text(yaml.safe_dump(config))
    return path


QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}


PG_URL = os.environ.get("CHURNSEG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_SCHEMA = "churnseg_bench_api"
FEATURE_TABLES = ("customers", "transactions", "events", "subscriptions")
_PG_TYPES = {
    "string": "text",
    "large_string": "text",
    "double": "double precision",
    "int64": "bigint",
    "bool": "boolean",
    "timestamp[us]": "timestamp",
    "timestamp[ns]": "timestamp",
}


def postgres_config(work: Path, config: Path) -> Path:
    """Load the four feature tables of ``work/data`` into PostgreSQL, each with an index on
    ``customer_id``; return a copy of ``config`` that reads them from there."""
    import duckdb
    import psycopg
    import pyarrow.parquet as pq

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        con.execute(f"CREATE SCHEMA {PG_SCHEMA}")
        for name in FEATURE_TABLES:
            files = sorted((work / "data").glob(f"{name}*.parquet"))
            schema = pq.read_schema(files[0])
            columns = ", ".join(f'"{f.name}" {_PG_TYPES[str(f.type)]}' for f in schema)
            con.execute(f"CREATE TABLE {PG_SCHEMA}.{name} ({columns})")
            for file in files:
                csv = work / f"{name}.csv"
                duckdb.sql(f"COPY (SELECT * FROM read_parquet('{file}')) TO '{csv}' (HEADER false)")
                with (
                    con.cursor().copy(f"COPY {PG_SCHEMA}.{name} FROM STDIN (FORMAT csv)") as copy,
                    csv.open("rb") as lines,
                ):
                    while chunk := lines.read(1 << 20):
                        copy.write(chunk)
                csv.unlink()
            con.execute(f"CREATE INDEX ON {PG_SCHEMA}.{name} (customer_id)")
            con.execute(f"ANALYZE {PG_SCHEMA}.{name}")
    loaded = yaml.safe_load(config.read_text())
    for name in FEATURE_TABLES:
        loaded["sources"][name] = {"url": PG_URL, "table": f"{PG_SCHEMA}.{name}"}
    path = config.with_name("config_postgres.yaml")
    path.write_text(yaml.safe_dump(loaded))
    return path


def churnseg(*args: str) -> float:
    """Run a churnseg command; return its wall time in seconds (raises when it fails)."""
    env = {**os.environ, **QUIET, "CHURNSEG_API_TOKEN": TOKEN}
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("churnseg")), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"churnseg {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


def add_changes(data: Path, snapshot: date, share: float, seed: int) -> list[str]:
    """Write one new order after the snapshot for ``share`` of the customers; return their ids."""
    import pandas as pd
    import pyarrow.parquet as pq

    customers = pq.read_table(data / "customers.parquet", columns=["customer_id"]).to_pandas()
    ids = customers["customer_id"].dropna().drop_duplicates()
    changed = ids.sample(frac=share, random_state=seed).sort_values().tolist()
    template = pq.read_table(data / "transactions.parquet").slice(0, 1).to_pandas()
    rng = random.Random(seed)
    start = datetime.combine(snapshot, datetime.min.time())
    rows = template.loc[template.index.repeat(len(changed))].reset_index(drop=True)
    rows["customer_id"] = changed
    rows["order_id"] = [f"NEW{i:08d}" for i in range(len(changed))]
    rows["timestamp"] = [start + timedelta(seconds=rng.randrange(86_400)) for _ in changed]
    rows["amount"] = 42.0
    rows["is_return"] = False
    pd.DataFrame(rows).to_parquet(data / "transactions_new.parquet", index=False)
    return changed


def timed_flows(config: str, as_of: str, out: Any) -> None:
    """In a fresh process: warm Prefect, then time score --changed and a full score."""
    os.environ.update(QUIET)
    from peak_memory import peak_rss_mb
    from prefect import flow

    from churnseg.pipelines.flows import score_changed_flow, score_flow

    @flow(name="warm-up")
    def warm() -> None:
        return None

    warm()
    started = time.perf_counter()
    changed = score_changed_flow(config_path=config, as_of=as_of)
    intraday = time.perf_counter() - started
    intraday_peak = peak_rss_mb()
    started = time.perf_counter()
    full = score_flow(config_path=config)
    out.put(
        {
            "intraday_s": intraday,
            "intraday_peak_mb": intraday_peak,
            "customers_changed": changed["customers_changed"],
            "rows_published": changed["rows_published"],
            "full_score_s": time.perf_counter() - started,
            "full_rows": full["rows_published"],
            "peak_mb": peak_rss_mb(),
        }
    )


def in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args, queue)`` in a new process; return what it put (raise when it died)."""
    import queue as queues

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=fn, args=(*args, results))
    process.start()
    while True:
        try:
            result: dict[str, Any] = results.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{fn.__name__} died (exit code {process.exitcode})") from None
    process.join()
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str
) -> int:
    """Send one keep-alive request and read its whole response; return the status."""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v)
        for k, _, v in (h.partition(": ") for h in lines[1:])
        if k.lower() == "content-length"
    )
    await reader.readexactly(length)
    return status


async def _drive(port: int, method: str, paths: list[str], clients: int) -> dict[str, Any]:
    """Send ``paths`` from ``clients`` connections, each one request at a time."""
    queue = list(reversed(paths))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            path = queue.pop()
            started = time.perf_counter()
            status = await _request(reader, writer, method, path)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "requests": len(ordered),
        "statuses": statuses,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": 1000 * ordered[-1],
        "per_second": len(ordered) / wall,
    }


def drive(port: int, method: str, paths: list[str], clients: int, out: Any) -> None:
    """The load generator, in its own process."""
    out.put(asyncio.run(_drive(port, method, paths, clients)))


def bench_api(config: Path, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Start the API, drive GETs then rescores; return their figures."""
    port = _free_port()
    env = {**os.environ, "CHURNSEG_API_TOKEN": TOKEN}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("churnseg")), "api", "-c", str(config),
         "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        rng = random.Random(args.seed)
        gets = [f"/customers/{rng.choice(ids)}" for _ in range(args.gets)]
        rescores = [f"/customers/{rng.choice(ids)}/rescore" for _ in range(args.rescores)]
        # The first rescore loads the models and waits for the keyed copies of the sources;
        # one batch of every client then compiles the queries of a full run, as a running
        # service has them. Neither is counted below.
        first = in_fresh_process(drive, port, "POST", rescores[:1], 1)
        in_fresh_process(drive, port, "POST", rescores[1 : 1 + args.clients], args.clients)
        results = {
            "first_rescore_s": first["max_ms"] / 1000,
            "get": in_fresh_process(drive, port, "GET", gets, args.clients),
            "rescore": in_fresh_process(drive, port, "POST", rescores, args.clients),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--train-customers", type=int, default=20_000)
    parser.add_argument("--changed-share", type=float, default=0.01)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--rescores", type=int, default=640)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/churnseg-bench"))
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also drive the API with the feature tables read from PostgreSQL (indexed)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    work = args.cache / f"api_{args.customers}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "train").mkdir(parents=True)
    (work / "data").mkdir()
    train = ensure_sample(args.cache, args.train_customers, args.seed)
    big = ensure_sample(args.cache, args.customers, args.seed)
    for t in TABLES:
        os.symlink(big / f"{t}.parquet", work / "data" / f"{t}.parquet")
    figures: dict[str, Any] = {"customers": args.customers}
    figures["train_s"] = churnseg("run", "-c", str(write_config(work, train, "train.yaml")))
    config = write_config(work, work / "data", "config.yaml")
    figures["first_full_score_s"] = churnseg("score", "-c", str(config))
    import sqlite3

    with sqlite3.connect(work / "scores.db") as con:
        (snapshot,) = con.execute("SELECT MAX(snapshot_date) FROM customer_scores").fetchone()
        published = con.execute("SELECT COUNT(*) FROM customer_scores_latest").fetchone()[0]
        ids = [r[0] for r in con.execute("SELECT customer_id FROM customer_scores_latest")]
    figures["published"] = published
    changed = add_changes(
        work / "data", date.fromisoformat(snapshot), args.changed_share, args.seed
    )
    as_of = (datetime.fromisoformat(snapshot) + timedelta(days=2)).isoformat()
    figures["cli_score_changed_s"] = churnseg(
        "score", "-c", str(config), "--changed", "--as-of", as_of
    )
    figures["api"] = bench_api(config, ids, args)
    if args.postgres:
        figures["api_postgres"] = bench_api(postgres_config(work, config), ids, args)
    figures |= in_fresh_process(timed_flows, str(config), as_of)
    figures["changed_expected"] = len(changed)
    print(
        f"customers published: {published:,}; changed: {len(changed):,} ({args.changed_share:.0%})"
    )
    print(
        f"score --changed (flow, warm process): {figures['intraday_s']:.1f} s for "
        f"{figures['customers_changed']:,} customers, peak {figures['intraday_peak_mb']:,.0f} MB "
        f"(target 30 s); the command with process start: {figures['cli_score_changed_s']:.1f} s"
    )
    print(
        f"full score of the same data (flow, warm process): {figures['full_score_s']:.1f} s for "
        f"{figures['full_rows']:,} rows"
    )
    keyed = work / "keyed"
    size = sum(f.stat().st_size for f in keyed.rglob("*") if f.is_file()) if keyed.exists() else 0
    figures["keyed_copies_gb"] = size / 1e9
    print(
        f"first rescore after the API started: {figures['api']['first_rescore_s']:.1f} s "
        f"(models loaded, keyed copies of the sources built: {size / 1e9:.1f} GB)"
    )
    for kind, target in (("get", 20), ("rescore", 500)):
        r = figures["api"][kind]
        print(
            f"{kind:8s} {r['requests']:,} requests at {args.clients} clients: "
            f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms (target {target}), "
            f"p99 {r['p99_ms']:.1f} ms, "
            f"{r['per_second']:.1f}/s, statuses {r['statuses']}"
        )
    if args.postgres:
        r = figures["api_postgres"]["rescore"]
        print(
            f"rescore  from PostgreSQL sources: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms "
            f"(target 500), p99 {r['p99_ms']:.1f} ms, {r['per_second']:.1f}/s; first rescore "
            f"{figures['api_postgres']['first_rescore_s']:.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
