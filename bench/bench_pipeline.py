"""End-to-end benchmark: wall time and peak memory of every pipeline stage, per customer count.

For each size the sample generator writes the bundled sample's four tables (about 20 transaction
lines and 10 events per customer, 1% dirty rows), once, into ``--cache``. Then every stage runs
in a fresh process of its own, in pipeline order, against one throwaway MLflow store, so each
peak RSS is that stage's alone:

  extract + clean, features (cutoff plan, training/validation/scoring tables, BG/NBD),
  k selection + k-means (segmentation stage), churn training with validation (search,
  calibration, backtest, baselines), scoring, publishing to SQLite and to PostgreSQL.

Reference figures from the same run, on the same data and matrices:
  - a hand-written DuckDB SQL query for the RFM subset against ``rfm_features`` (Ibis);
  - the whole scoring snapshot (every family, one cutoff) written by hand in DuckDB SQL
    (``features_sql.py``, the same table: tests/test_feature_reference.py) against the feature
    build's own query for it, both written to Parquet unsorted (target: at most 1.3x);
  - scikit-learn ``KMeans`` at the chosen k on the segmentation matrix, and
    ``HistGradientBoostingClassifier`` with the chosen parameters on the training matrix,
    fitted directly, against the whole segmentation and churn stages.
With ``--end-to-end`` the retrain flow (what ``churnseg run`` runs: every stage above plus
Prefect and MLflow bookkeeping) also runs in one process, the figure the targets are about.

Targets (issue 21), printed next to each figure they concern: at 1M customers extract + clean
<= 40 s, features <= 60 s, the retrain flow <= 300 s and 5 GB peak, the score flow <= 45 s; at
5M the retrain and score flows together <= 30 min, each <= 12 GB peak; no stage's time growing
faster than the customer count (the scaling lines at the end).

Example: python bench/bench_pipeline.py --sizes 100000 1000000 --end-to-end
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peak_memory import peak_rss_mb

PG_URL = os.environ.get("CHURNSEG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Stages in pipeline order: each reads what the one before wrote into the run folder.
STAGES = (
    "extract+clean",
    "features",
    "segmentation",
    "churn",
    "scoring",
    "publish-sqlite",
    "publish-postgres",
)


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def bench_environ(
    work: Path, sample_dir: Path, customers: int, pg: bool, memory_limit: str | None = None
) -> dict[str, str]:
    """Return the ``CHURNSEG__`` overrides of one benchmark run (default config otherwise).

    ``memory_limit``: ``engine.duckdb_memory_limit`` (DuckDB spills beyond it).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNSEG__")}
    # Every table the sample writes, the allocation's owners and assignments included.
    tables = ("customers", "transactions", "events", "subscriptions", "owners", "assignments")
    env |= {
        f"CHURNSEG__SOURCES__{t.upper()}__PATH": str(sample_dir / f"{t}.parquet") for t in tables
    }
    env |= {
        "CHURNSEG__STATE_DIR": str(work),
        "CHURNSEG__SAMPLE__CUSTOMERS": str(customers),
        "CHURNSEG__SAMPLE__ENABLED": "false",
        "CHURNSEG__MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "CHURNSEG__MLFLOW__ARTIFACT_LOCATION": str(work / "mlartifacts"),
        "CHURNSEG__PUBLISH__URL": PG_URL if pg else f"sqlite:///{work / 'scores.db'}",
    }
    if memory_limit:
        env["CHURNSEG__ENGINE__DUCKDB_MEMORY_LIMIT"] = memory_limit
    if pg:  # its own tables, so a benchmark never touches a real deployment's
        env |= {
            "CHURNSEG__PUBLISH__TABLE": "bench_customer_scores",
            "CHURNSEG__PUBLISH__SEGMENT_PROFILES_TABLE": "bench_segment_profiles",
            "CHURNSEG__PUBLISH__QUARANTINE_TABLE": "bench_data_quarantine",
            "CHURNSEG__PUBLISH__RUNS_TABLE": "bench_pipeline_runs",
        }
    return env


def ensure_sample(cache: Path, customers: int, seed: int) -> Path:
    """Generate the sample once per size and seed (the generator's default shape)."""
    from churnseg.pipelines.sample import SampleSpec, write_sample

    folder = cache / f"pipeline_{customers}_{seed}"
    if not (folder / "manifest.json").exists():
        write_sample(SampleSpec(customers=customers, seed=seed, dirty_fraction=0.01), folder)
    return folder


def _quiet() -> None:
    # OMP_NUM_THREADS is left as the caller set it: unset, scikit-learn uses every core, as
    # `churnseg run` does; OMP_NUM_THREADS=1 gives the single-thread figures.
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
    }.items():
        os.environ.setdefault(key, value)
    import warnings

    warnings.filterwarnings("ignore")


def run_stage(stage: str, env: dict[str, str], run_folder: str, run_id: str) -> dict[str, Any]:
    """Run one stage in this (fresh) process; return its wall time, peak RSS and figures."""
    os.environ.clear()
    os.environ.update(env)
    _quiet()
    import mlflow

    from churnseg.pipelines import stages
    from churnseg.pipelines.config import load_config
    from churnseg.pipelines.publish import publish_scores, target_from_config

    config = load_config()
    stages.configure_mlflow(config)
    paths = stages.RunPaths(Path(run_folder))
    out: dict[str, Any] = {}
    with mlflow.start_run(run_id=run_id):
        began = time.perf_counter()
        if stage == "extract+clean":
            out["rows_read"] = sum(stages.extract_stage(config, paths).values())
            quality = stages.clean_stage(config, paths)
            out["rows_quarantined"] = sum(q.quarantined for q in quality.values())
        elif stage == "features":
            plan = stages.resolve_plan(config, paths)
            out["rows"] = stages.feature_stage(config, paths, plan)
        elif stage == "segmentation":
            seg = stages.segmentation_stage(config, paths, run_id)
            out["k"] = seg.k
        elif stage == "churn":
            churn = stages.churn_stage(config, paths)
            out["val_roc_auc"] = round(churn.metrics["val_roc_auc"], 4)
            out["val_ece"] = round(churn.metrics["val_ece"], 4)
            out["candidate"] = churn.candidate
        elif stage == "scoring":
            out["rows"] = stages.score_stage(
                config, paths.features / "scoring.parquet", paths.scores, run_id
            )
        elif stage.startswith("publish"):
            out["rows"] = publish_scores(paths.scores, target_from_config(config))
        else:
            raise ValueError(stage)
        out["seconds"] = time.perf_counter() - began
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_reference(kind: str, env: dict[str, str], run_folder: str, run_id: str) -> dict[str, Any]:
    """Fit the bare library on the stage's own matrix (fresh process); return its figures."""
    os.environ.clear()
    os.environ.update(env)
    _quiet()
    import mlflow
    import numpy as np
    import pandas as pd

    from churnseg.pipelines import stages
    from churnseg.pipelines.config import load_config

    config = load_config()
    stages.configure_mlflow(config)
    paths = stages.RunPaths(Path(run_folder))
    params = mlflow.get_run(run_id).data.params
    out: dict[str, Any] = {}
    if kind == "kmeans":
        frame = pd.read_parquet(paths.features / "scoring.parquet")
        inputs = stages.segmentation_inputs(config, frame)
        pipeline = stages.segmentation_pipeline_from_config(config, inputs)
        # The stage's own clustering space (inputs, signed log, scaling) ...
        matrix = pipeline[:-1].fit_transform(frame)
        k = int(params["segmentation_k"])
        # ... and the k-means the stage fits, once, at the chosen k, on as many rows as the
        # stage fits it on (a sample above segmentation.fit_sample_rows rows).
        km = pipeline[-1]
        estimator = km.estimator(k)
        rows = km.fit_rows(matrix, np.random.default_rng(km.random_state))
        began = time.perf_counter()
        estimator.fit(rows)
        out["seconds"] = time.perf_counter() - began
        out["shape"] = rows.shape
        out["estimator"] = type(estimator).__name__
    elif kind == "hgb":
        from churnseg.models import churn as churn_model

        c = config.churn
        train = stages.at_risk_population(
            pd.read_parquet(paths.features / "train.parquet"),
            stages.population_recency_limit(config),
        )
        spec = churn_model.model_inputs(train)[0]
        # The rows the final model fits on (all but the last training cutoff), through the
        # candidate's own column preparation, so only the booster's fit is timed.
        early, _ = churn_model.split_last_cutoff(train)
        chosen = params["churn_candidate"]
        grid = (
            json.loads(params["churn_params"])
            if chosen == "hgb"
            else churn_model.PARAM_GRIDS["hgb"][0]
        )
        pipeline = churn_model.candidate_pipeline("hgb", spec, grid, c.random_state)
        matrix = pipeline["prep"].fit_transform(early[spec.columns])
        label = early[churn_model.LABEL].to_numpy()
        began = time.perf_counter()
        pipeline["model"].fit(matrix, label)
        out["seconds"] = time.perf_counter() - began
        out["shape"] = matrix.shape
        out["candidate"] = chosen
    elif kind in ("rfm_ibis", "rfm_sql"):
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_features import AS_OF, rfm_sql

        from churnseg.features.behaviour import rfm_features
        from churnseg.pipelines.config import FeatureConfig
        from churnseg.pipelines.sources import connect_engine

        con = connect_engine()
        clean = paths.clean
        target = str(Path(run_folder) / f"{kind}.parquet")
        windows = FeatureConfig().windows
        began = time.perf_counter()
        if kind == "rfm_ibis":
            tx = con.read_parquet(clean / "transactions.parquet")
            cu = con.read_parquet(clean / "customers.parquet")
            con.to_parquet(rfm_features(tx, cu, AS_OF, windows), target)
        else:
            con.raw_sql(f"COPY ({rfm_sql(clean, windows)}) TO '{target}' (FORMAT parquet)")
        out["seconds"] = time.perf_counter() - began
    elif kind in ("snapshot_ibis", "snapshot_sql"):
        out["seconds"] = _time_snapshot(kind, config, paths, Path(run_folder) / f"{kind}.parquet")
    else:
        raise ValueError(kind)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _time_snapshot(kind: str, config: Any, paths: Any, target: Path) -> float:
    """Return the seconds writing the run's scoring snapshot to ``target`` takes.

    ``snapshot_ibis``: the feature build's own query, as the stage writes one (unsorted).
    ``snapshot_sql``: the hand-written query of ``features_sql.py``.
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from features_sql import snapshot_sql

    from churnseg.features.attributes import NOT_ATTRIBUTES
    from churnseg.features.build import resolve_levels
    from churnseg.features.snapshots import scoring_snapshot
    from churnseg.features.tables import slugs
    from churnseg.pipelines import stages
    from churnseg.pipelines.sources import FeatureEngine, connect_engine

    plan = stages.resolve_plan(config, paths)
    with FeatureEngine(connect_engine(config.engine)) as engine:
        clean = paths.clean
        names = ("customers", "transactions", "events", "subscriptions")
        tables = {name: engine.read_parquet(clean / f"{name}.parquet") for name in names}
        # Levels resolved before the clock starts, for both: the stage does it once per build.
        settings = resolve_levels(tables, plan.scoring, config.features)
        began = time.perf_counter()
        if kind == "snapshot_ibis":
            seen = engine.read_parquet(clean / "seen.parquet")
            expr = scoring_snapshot(tables, plan.scoring, settings, plan.horizon_days, seen)
            engine.write_parquet(expr, target)
        else:
            schema = tables["customers"].schema()
            numeric = [
                name
                for name, dtype in schema.items()
                if name not in NOT_ATTRIBUTES and (dtype.is_boolean() or dtype.is_numeric())
            ]
            sql = snapshot_sql(
                clean,
                plan.scoring,
                windows=settings.windows,
                channels=slugs("channels", settings.channels or []),
                event_types=slugs("event_types", settings.event_types or []),
                attribute_levels=settings.attribute_levels or {},
                numeric_attributes=numeric,
            )
            engine.con.raw_sql(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
        return time.perf_counter() - began


def run_flow(kind: str, env: dict[str, str], features_path: str) -> dict[str, Any]:
    """Run a whole flow in this (fresh) process: ``retrain`` (= ``churnseg run``) or ``score``."""
    os.environ.clear()
    os.environ.update(env)
    _quiet()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from churnseg.pipelines.flows import retrain_flow, score_flow

    since = datetime.now(UTC)
    began = time.perf_counter()
    if kind == "retrain":
        summary = retrain_flow()
    elif kind == "score":
        # Into the stages' run folder, as retrain does: allocation reads its clean owners there.
        folder = str(Path(features_path).parent.parent)
        summary = score_flow(features_path=features_path, run_folder=folder)
    else:
        raise ValueError(kind)
    return {
        "seconds": time.perf_counter() - began,
        "peak_rss_mb": peak_rss_mb(),
        "rows_published": summary["rows_published"],
        "val_roc_auc": summary.get("val_roc_auc"),
        "run_folder": summary.get("run_folder"),
        "tasks": task_seconds(since),
    }


def task_seconds(since: datetime) -> list[tuple[str, float]]:
    """Return (task name, wall seconds) of every Prefect task run started since ``since``.

    In start order, as Prefect's server recorded them; the name without its run suffix. The
    retrain flow's score subflow shows as one ``score`` entry, then its own tasks.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=after)
    timed = [r for r in runs if r.start_time is not None and r.end_time is not None]
    timed.sort(key=lambda r: r.start_time)
    return [
        (r.name.rsplit("-", 1)[0], round((r.end_time - r.start_time).total_seconds(), 1))
        for r in timed
    ]


def in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    """Call ``fn(*args)`` in a fresh spawned process (its own peak RSS, no warm caches)."""
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args)


def new_run(env: dict[str, str]) -> str:
    """Create the MLflow run every stage process of one size logs into; return its id."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        import mlflow

        from churnseg.pipelines import stages
        from churnseg.pipelines.config import load_config

        stages.configure_mlflow(load_config())
        with mlflow.start_run(run_name="bench") as run:
            return str(run.info.run_id)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def postgres_reachable() -> bool:
    """Return whether the benchmark PostgreSQL answers."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # any failure means: skip PostgreSQL
        print(f"  (PostgreSQL at {PG_URL} unreachable, publish-postgres skipped: {exc})")
        return False
    return True


# Issue 21's targets per customer count: stage or flow -> (seconds, peak MB), None = no target.
TARGETS: dict[int, dict[str, tuple[float | None, float | None]]] = {
    1_000_000: {
        "extract+clean": (40, None),
        "features": (60, None),
        "flow-retrain": (300, 5_000),
        "flow-score": (45, None),
    },
    5_000_000: {"flow-retrain": (None, 12_000), "flow-score": (None, 12_000)},
}
# At 5M: the retrain and score flows together.
FLOWS_TOTAL_TARGET = {5_000_000: 30 * 60.0}
# The feature build's scoring snapshot against the same table written by hand (issue 21).
SNAPSHOT_RATIO_TARGET = 1.3


def _target(n: int, stage: str, r: dict[str, Any]) -> str:
    """Return the stage's targets at ``n`` customers and whether it met them ('' without)."""
    seconds, mb = TARGETS.get(n, {}).get(stage, (None, None))
    parts = []
    if seconds is not None:
        parts.append(f"<= {seconds:.0f} s {'met' if r['seconds'] <= seconds else 'MISSED'}")
    if mb is not None:
        parts.append(f"<= {mb:,.0f} MB {'met' if r['peak_rss_mb'] <= mb else 'MISSED'}")
    return f"  [target {', '.join(parts)}]" if parts else ""


def _fmt(stage: str, r: dict[str, Any], n: int = 0, key: str = "") -> str:
    extra = {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mb", "tasks")}
    target = _target(n, key or stage, r)
    return f"  {stage:<18} {r['seconds']:8.1f} s  {r['peak_rss_mb']:8,.0f} MB{target}  {extra}"


def _task_line(r: dict[str, Any]) -> str:
    tasks = r.get("tasks") or []
    return "    tasks: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in tasks)


def bench_size(n: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run every stage, the references and (optionally) the flows at ``n`` customers."""
    began = time.perf_counter()
    sample = ensure_sample(args.cache, n, args.seed)
    counts = json.loads((sample / "manifest.json").read_text())["row_counts"]
    print(
        f"\n{n:,} customers: {counts['transactions']:,} transaction lines, "
        f"{counts['events']:,} events, {counts['subscriptions']:,} subscriptions "
        f"(sample ready in {time.perf_counter() - began:.0f} s; load average {_load()})"
    )
    results: dict[str, dict[str, Any]] = {}
    pg = "publish-postgres" in args.stages and postgres_reachable()
    with tempfile.TemporaryDirectory(prefix="churnseg_bench_") as tmp:
        # --keep: the run folder and MLflow store stay for profiling a stage afterwards.
        work = args.keep / str(n) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        limit = args.duckdb_memory_limit
        env = bench_environ(work, sample, n, pg=False, memory_limit=limit)
        run_id = new_run(env)
        folder = str(work / "runs" / "bench")
        print(f"  {'stage':<18} {'wall':>10}  {'peak RSS':>11}")
        for stage in args.stages:
            if stage == "publish-postgres" and not pg:
                continue
            stage_env = (
                bench_environ(work, sample, n, pg=True, memory_limit=limit)
                if stage == "publish-postgres"
                else env
            )
            results[stage] = in_fresh_process(run_stage, stage, stage_env, folder, run_id)
            print(_fmt(stage, results[stage], n), flush=True)
        total = sum(r["seconds"] for r in results.values() if "publish-postgres" not in r)
        print(f"  {'sum of stages':<18} {total:8.1f} s  (publish-postgres excluded)")
        # The references read the features stage's tables.
        if args.references and "features" in results:
            print("  reference figures (same data and matrices, fresh processes):")
            for kind in ("rfm_ibis", "rfm_sql"):
                results[f"ref-{kind}"] = in_fresh_process(run_reference, kind, env, folder, run_id)
            rfm = results["ref-rfm_ibis"]["seconds"] / results["ref-rfm_sql"]["seconds"]
            print(
                f"    RFM subset: Ibis {results['ref-rfm_ibis']['seconds']:.2f} s, hand-written "
                f"DuckDB SQL {results['ref-rfm_sql']['seconds']:.2f} s: ratio {rfm:.2f}"
            )
            # Twice each, alternately; the faster of each pair.
            for kind in ("snapshot_ibis", "snapshot_sql") * 2:
                ref = in_fresh_process(run_reference, kind, env, folder, run_id)
                old = results.get(f"ref-{kind}")
                if old is None or ref["seconds"] < old["seconds"]:
                    results[f"ref-{kind}"] = ref
            ours, sql = results["ref-snapshot_ibis"], results["ref-snapshot_sql"]
            ratio = ours["seconds"] / sql["seconds"]
            verdict = "met" if ratio <= SNAPSHOT_RATIO_TARGET else "MISSED"
            print(
                f"    whole scoring snapshot (every family, one cutoff): feature build "
                f"{ours['seconds']:.2f} s, hand-written DuckDB SQL (bench/features_sql.py) "
                f"{sql['seconds']:.2f} s: ratio {ratio:.2f}  [target <= "
                f"{SNAPSHOT_RATIO_TARGET} {verdict}]"
            )
            if "segmentation" in results:
                ref = in_fresh_process(run_reference, "kmeans", env, folder, run_id)
                results["ref-kmeans"] = ref
                ratio = results["segmentation"]["seconds"] / ref["seconds"]
                print(
                    f"    KMeans at the chosen k on {ref['shape']}: {ref['seconds']:.2f} s; "
                    f"segmentation stage (k selection {config_k_range()} + fit + naming + "
                    f"registry) / bare fit: {ratio:.1f}x"
                )
            if "churn" in results:
                ref = in_fresh_process(run_reference, "hgb", env, folder, run_id)
                results["ref-hgb"] = ref
                ratio = results["churn"]["seconds"] / ref["seconds"]
                print(
                    f"    HistGradientBoosting with the chosen parameters on {ref['shape']} "
                    f"(champion candidate: {ref['candidate']}): {ref['seconds']:.2f} s; churn "
                    f"stage (search + calibration + backtest + baselines + registry) / bare "
                    f"fit: {ratio:.1f}x"
                )
        if args.end_to_end:
            e2e_env = bench_environ(work / "e2e", sample, n, pg=False, memory_limit=limit)
            (work / "e2e").mkdir()
            results["flow-retrain"] = in_fresh_process(run_flow, "retrain", e2e_env, "")
            print(
                _fmt("retrain flow", results["flow-retrain"], n, "flow-retrain")
                + "  (= churnseg run)",
                flush=True,
            )
            print(_task_line(results["flow-retrain"]), flush=True)
            # The stages' scoring table when they built one, else the retrain flow's own.
            built = work / "runs" / "bench" / "features" / "scoring.parquet"
            if not built.exists():
                built = Path(results["flow-retrain"]["run_folder"]) / "features" / "scoring.parquet"
            results["flow-score"] = in_fresh_process(run_flow, "score", e2e_env, str(built))
            print(
                _fmt("score flow", results["flow-score"], n, "flow-score")
                + "  (score + publish, features built)"
            )
            print(_task_line(results["flow-score"]), flush=True)
            both = results["flow-retrain"]["seconds"] + results["flow-score"]["seconds"]
            allowed = FLOWS_TOTAL_TARGET.get(n)
            verdict = ""
            if allowed is not None:
                verdict = f"  [target <= {allowed:.0f} s {'met' if both <= allowed else 'MISSED'}]"
            print(f"  {'both flows':<18} {both:8.1f} s{verdict}")
    return results


def config_k_range() -> str:
    """Return the k range the default config searches (for the printout)."""
    from churnseg.pipelines.config import load_config

    s = load_config().segmentation
    return f"{s.k_min}..{s.k_max}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--stages",
        nargs="*",
        default=list(STAGES),
        choices=STAGES,
        help="stages to time one by one (none: with --end-to-end, only the flows)",
    )
    parser.add_argument("--no-references", dest="references", action="store_false")
    parser.add_argument("--end-to-end", action="store_true", help="also time the whole flows")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--duckdb-memory-limit",
        help="engine.duckdb_memory_limit for every stage and flow (e.g. 8GB; default: DuckDB's)",
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "churnseg_bench"
    )
    parser.add_argument(
        "--keep", type=Path, help="work in DIR/<size> and keep it (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    _quiet()
    report = {n: bench_size(n, args) for n in args.sizes}
    if len(report) > 1:
        small, large = min(report), max(report)
        print(f"\nscaling {small:,} -> {large:,} customers ({large / small:.0f}x):")
        for stage, r in report[large].items():
            if stage in report[small]:
                t = r["seconds"] / report[small][stage]["seconds"]
                m = r["peak_rss_mb"] / report[small][stage]["peak_rss_mb"]
                linear = "linear or better" if t <= large / small else "WORSE than linear"
                print(f"  {stage:<18} time {t:5.1f}x ({linear})  peak memory {m:5.1f}x")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in report.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
