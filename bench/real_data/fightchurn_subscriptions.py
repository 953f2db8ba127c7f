"""Subscription-business benchmark data from ChurnSim, the simulator of "Fighting Churn With Data".

The PyPI package ``fightchurn`` (1.2.0, MIT, Carl Gold) simulates a social-network SaaS
(model ``socialnet7``: one $9.99 plan, monthly billing, 8 event types, churn driven by each
customer's monthly activity). This script

1. creates a private virtualenv under ``--cache`` (once) with ``fightchurn==1.2.0`` and the few
   packages its simulator imports (its declared requirements, ~1.7 GB with xgboost, shap, numba
   and twine, are only used by the book's listings, so it is installed with ``--no-deps``);
2. runs the simulator's own Hydra entry point (``python -m fightchurn.churnsim.churnsim``) into
   a PostgreSQL schema this script owns (``--schema``, dropped and recreated by the simulator);
3. exports ``account``, ``subscription`` and ``event`` (+ ``event_type`` names) to Parquet in
   ``<cache>/fightchurn/`` and drops the schema again (unless ``--keep-schema``);
4. prints rows, date ranges and churn figures; with the Parquet files present it only prints
   them (``--force`` to redo).

The simulator names its schema after the model and reads ``conf/<model>_*.csv``; to write into
``--schema`` instead, the model's CSV files are copied under the schema's name inside the
private virtualenv's ``conf`` folder and Hydra gets ``model=<schema>``.

Reproducibility: with ``--n-parallel 1`` (default) the output is identical run to run for the
same arguments: the simulator seeds Python's ``random`` (in its entry point) and NumPy's global
generator (in the behaviour model) from ``random_seed``. With ``--n-parallel`` > 1 joblib
workers draw from unseeded generators and customer ids depend on scheduling, so runs differ.

Simulator quirks kept in the export:
- every subscription row has an end date: one row per paid month (start = renewal date,
  end = next renewal). A churned customer's last row ends on or before ``--end``; an active
  customer's last row ends after it (paid through). Churned customers never come back.
- churn is decided at a renewal date; events stop at the end of the last paid month.
- the plan price is rounded to whole units: ``recurring_revenue`` is 10.0, not 9.99.
- ``value`` is null for every socialnet7 event (no valued behaviours); ``discount`` is 0.
- the simulator generates events up to the end of each active customer's current month, up
  to a month past ``--end``; the export keeps only events before ``--end``.
- initial customers start on random days of the first month and ~7% of them churn at their
  first renewal; after that churn runs at about 2% a month. Customers grow 10% a month.

Size and time (2 cores, simulation is single-threaded Python, ~290 events per customer-month):
the default 1,000 initial customers over 12 months gives ~2,900 customers, ~19,500
subscription rows and ~5.7 M events in about 5 minutes; 3,000 initial customers take ~17
minutes (~8,600 customers, 17 M events); 10,000 over 3 months ~11 minutes. Time grows about
linearly with customer-months (10,000 over 12 months would take about an hour).

Example (from /work/main):
    .venv/bin/python bench/real_data/fightchurn_subscriptions.py --cache /tmp/churnseg_real
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

FIGHTCHURN = "fightchurn==1.2.0"
# What fightchurn.churnsim imports, in the version ranges fightchurn 1.2.0 declares.
SIM_REQUIREMENTS = (
    "hydra-core~=1.3",
    "omegaconf~=2.3",
    "postgres~=4.0",
    "psycopg2-binary~=2.9",
    "psycopg2-pool~=1.1",
    "filelock~=3.12",
    "joblib~=1.3",
    "numpy~=2.0",
    "pandas~=2.0",
    "python-dateutil~=2.8",
)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = ("customers", "subscriptions", "events")

SCHEMAS = {
    "customers": pa.schema(
        [
            ("customer_id", pa.string()),
            ("channel", pa.string()),
            ("date_of_birth", pa.date32()),
            ("country", pa.string()),
        ]
    ),
    "subscriptions": pa.schema(
        [
            ("customer_id", pa.string()),
            ("plan", pa.string()),
            ("start_date", pa.date32()),
            ("end_date", pa.date32()),
            ("recurring_revenue", pa.float64()),
            ("bill_period_months", pa.int32()),
            ("discount", pa.float64()),
        ]
    ),
    "events": pa.schema(
        [
            ("customer_id", pa.string()),
            ("timestamp", pa.timestamp("us")),
            ("event_type", pa.string()),
            ("value", pa.float64()),
        ]
    ),
}

QUERIES = {
    "customers": """
        SELECT id::text AS customer_id, channel, date_of_birth, country
        FROM {schema}.account ORDER BY id""",
    "subscriptions": """
        SELECT account_id::text AS customer_id, product AS plan, start_date, end_date,
               mrr AS recurring_revenue, bill_period_months, discount
        FROM {schema}.subscription ORDER BY account_id, start_date, product""",
    "events": """
        SELECT e.account_id::text AS customer_id, e.event_time AS timestamp,
               t.event_type_name AS event_type, e.event_value::float8 AS value
        FROM {schema}.event e JOIN {schema}.event_type t USING (event_type_id)
        WHERE e.event_time < {end}
        ORDER BY e.account_id, e.event_time, t.event_type_name""",
}


def ensure_venv(cache: Path) -> Path:
    """Create (once) the simulator's virtualenv under ``cache``; return its python."""
    venv = cache / "venv"
    python = venv / "bin" / "python"
    marker = venv / "churnseg-requirements.txt"
    wanted = "\n".join((FIGHTCHURN, *SIM_REQUIREMENTS)) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"creating virtualenv {venv} ...", flush=True)
    log = cache / "venv-install.log"
    base = getattr(sys, "_base_executable", sys.executable)
    with log.open("w") as out:
        for cmd in (
            [base, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--no-deps", FIGHTCHURN],
            [str(python), "-m", "pip", "install", *SIM_REQUIREMENTS],
        ):
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")
    marker.write_text(wanted)
    return python


def alias_model(venv: Path, model: str, schema: str) -> None:
    """Copy the model's ``conf/<model>_*.csv`` as ``<schema>_*.csv`` in the venv's package."""
    confs = sorted(venv.glob("lib/python*/site-packages/fightchurn/churnsim/conf"))
    if not confs:
        raise SystemExit(f"fightchurn is not installed in {venv}")
    conf = confs[0]
    if not (conf / f"{model}.yaml").exists():
        known = sorted(p.stem for p in conf.glob("*.yaml") if p.stem not in ("default", "test"))
        raise SystemExit(f"unknown model {model!r}; fightchurn has {', '.join(known)}")
    if schema == model:
        return
    for source in conf.glob(f"{model}_*.csv"):
        shutil.copyfile(source, conf / (schema + source.name[len(model) :]))


def simulator_env(pg_url: str, sim_dir: Path) -> dict[str, str]:
    """Environment for the simulator: database from ``pg_url``, private temp and output dirs."""
    url = urlsplit(pg_url)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        CHURN_DB=url.path.lstrip("/") or "postgres",
        CHURN_DB_USER=unquote(url.username or "postgres"),
        CHURN_DB_PASS=unquote(url.password or ""),
        CHURN_DB_HOST=url.hostname or "localhost",
        PGPORT=str(url.port or 5432),  # the simulator's connection strings carry no port
        CHURN_OUT_DIR=str(sim_dir / "out"),
        # Customer ids and per-customer CSVs go to tempfile.gettempdir(): keep them private.
        TMPDIR=str(sim_dir / "tmp"),
    )
    return env


def simulate(python: Path, args: argparse.Namespace, sim_dir: Path) -> None:
    """Run the simulator's Hydra entry point; echo its per-month progress lines."""
    shutil.rmtree(sim_dir, ignore_errors=True)
    (sim_dir / "tmp").mkdir(parents=True)
    overrides = {
        "model": args.schema,
        "init_customers": args.customers,
        "start_date": args.start.isoformat(),
        "end_date": args.end.isoformat(),
        "random_seed": args.seed,
        "n_parallel": args.n_parallel,
        "force": "true",  # drop and recreate the schema without asking
    }
    cmd = [str(python), "-m", "fightchurn.churnsim.churnsim", "--config-name", args.model]
    cmd += [f"{key}={value}" for key, value in overrides.items()]
    log = sim_dir / "simulation.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=sim_dir,  # Hydra writes churnsim.log into the working directory
            env=simulator_env(args.pg_url, sim_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Created "):
                print(f"  {line.split(' @ ')[0].strip()}", flush=True)
    if proc.wait():
        tail = log.read_text().splitlines()[-20:]
        raise SystemExit("\n".join([f"simulation failed (see {log}):", *tail]))


def export(pg_url: str, schema: str, end: date, out_dir: Path) -> None:
    """Copy the simulated tables to Parquet (written aside, then moved into place)."""
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with psycopg.connect(pg_url, autocommit=True) as con, con.cursor() as cur:
        for name in TABLES:
            query = sql.SQL(QUERIES[name]).format(
                schema=sql.Identifier(schema), end=sql.Literal(end)
            )
            csv_path = staging / f"{name}.csv"
            with csv_path.open("wb") as f:
                stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(query)
                with cur.copy(stmt) as copy:
                    for chunk in copy:
                        f.write(chunk)
            schema_ = SCHEMAS[name]
            table = pacsv.read_csv(
                csv_path,
                convert_options=pacsv.ConvertOptions(
                    column_types=schema_, strings_can_be_null=True
                ),
            ).cast(schema_)
            pq.write_table(table, staging / f"{name}.parquet", compression="zstd")
            csv_path.unlink()
    for name in TABLES:
        os.replace(staging / f"{name}.parquet", out_dir / f"{name}.parquet")
    staging.rmdir()


def drop_schema(pg_url: str, schema: str) -> None:
    """Drop the simulator's schema (its event table is the bulk of the data)."""
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def summarize(out_dir: Path, end: date) -> dict[str, object]:
    """Rows, date ranges and churn figures of the exported tables."""
    customers = pq.read_metadata(out_dir / "customers.parquet").num_rows
    subs = pq.read_table(out_dir / "subscriptions.parquet")
    events = pq.read_table(out_dir / "events.parquet", columns=["customer_id", "timestamp"])
    event_types = pq.read_table(out_dir / "events.parquet", columns=["event_type"])

    last = subs.group_by("customer_id").aggregate([("end_date", "max")])
    churned = pc.sum(pc.less_equal(last["end_date_max"], pa.scalar(end, pa.date32()))).as_py()
    # Customers with an event on or after the end of their last paid month (expected 0).
    last_event = events.group_by("customer_id").aggregate([("timestamp", "max")])
    joined = last_event.join(last, "customer_id")
    paid_until = pc.cast(joined["end_date_max"], pa.timestamp("us"))
    late = pc.sum(pc.greater_equal(joined["timestamp_max"], paid_until)).as_py() or 0
    counts = pc.value_counts(event_types["event_type"]).to_pylist()

    def span(table: pa.Table, column: str) -> list[str]:
        low, high = pc.min_max(table[column]).values()
        return [str(low), str(high)]

    return {
        "customers": customers,
        "subscriptions": subs.num_rows,
        "events": events.num_rows,
        "subscription_start": span(subs, "start_date"),
        "subscription_end": span(subs, "end_date"),
        "subscriptions_with_end_date": subs.num_rows - subs["end_date"].null_count,
        "subscriptions_ending_after_end": pc.sum(
            pc.greater(subs["end_date"], pa.scalar(end, pa.date32()))
        ).as_py(),
        "customers_with_subscriptions": last.num_rows,
        "customers_churned": churned,
        "customers_with_events_after_last_paid_month": late,
        "event_time": span(events, "timestamp"),
        "event_types": {
            c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])
        },
    }


def print_summary(summary: dict[str, object], timings: dict[str, float]) -> None:
    """Print the summary as aligned lines."""
    for key, value in summary.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k} {v:,}" for k, v in value.items())
        elif isinstance(value, list):
            text = " .. ".join(value)
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        print(f"{key + ':':46s}{text}")
    for key, seconds in timings.items():
        print(f"{'time ' + key + ':':46s}{seconds:,.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = Path(tempfile.gettempdir()) / "churnseg_real"
    parser.add_argument("--cache", type=Path, default=default_cache, help="cache folder")
    parser.add_argument("--customers", type=int, default=1000, help="initial customers")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2025, 1, 1))
    parser.add_argument("--seed", type=int, default=42, help="simulator random_seed")
    parser.add_argument("--model", default="socialnet7", help="fightchurn conf model")
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL for the simulator")
    parser.add_argument("--schema", default="churnseg_fightchurn", help="schema to (re)create")
    parser.add_argument("--n-parallel", type=int, default=1, help=">1 is not reproducible")
    parser.add_argument("--keep-schema", action="store_true", help="keep the schema after export")
    parser.add_argument("--force", action="store_true", help="simulate even if cached")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.schema):
        parser.error("--schema must be a lower-case SQL identifier")
    if args.end <= args.start:
        parser.error("--end must be after --start")
    return args


def main(argv: list[str] | None = None) -> int:
    """Simulate (unless cached), export and summarize."""
    args = parse_args(argv)
    began = time.perf_counter()
    cache = args.cache.resolve()
    out_dir = cache / "fightchurn"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "meta.json"
    params = {
        "package": FIGHTCHURN,
        "model": args.model,
        "customers": args.customers,
        "start": args.start.isoformat(),
        "end": args.end.isoformat(),
        "seed": args.seed,
        "n_parallel": args.n_parallel,
    }
    cached = meta_path.exists() and all((out_dir / f"{t}.parquet").exists() for t in TABLES)
    timings: dict[str, float] = {}
    if cached and not args.force:
        meta = json.loads(meta_path.read_text())
        print(f"cached: {out_dir} (made {meta['created']}; --force to simulate again)")
        if meta["params"] != params:
            print(f"  cached with other arguments: {meta['params']}")
        summary = summarize(out_dir, date.fromisoformat(meta["params"]["end"]))
        timings.update({f"{k} (when made)": v for k, v in meta["timings"].items()})
        timings["this run"] = time.perf_counter() - began
    else:
        step = time.perf_counter()
        python = ensure_venv(cache)
        alias_model(python.parent.parent, args.model, args.schema)
        timings["venv"] = time.perf_counter() - step
        meta_path.unlink(missing_ok=True)  # the Parquet files are about to be replaced
        print(f"simulating {args.model} into schema {args.schema}: {params}", flush=True)
        step = time.perf_counter()
        simulate(python, args, out_dir / "sim")
        timings["simulation"] = time.perf_counter() - step
        step = time.perf_counter()
        export(args.pg_url, args.schema, args.end, out_dir)
        if not args.keep_schema:
            drop_schema(args.pg_url, args.schema)
        timings["export"] = time.perf_counter() - step
        summary = summarize(out_dir, args.end)
        timings["total"] = time.perf_counter() - began
        meta = {
            "created": datetime.now().isoformat(timespec="seconds"),
            "params": params,
            "timings": timings,
            "summary": summary,
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"parquet: {out_dir}")
    print_summary(summary, timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
