"""The ``churnseg`` command line.

Exit codes: 0 success; 1 unexpected error; 2 bad configuration or usage; 3 unusable input data
(missing columns, too many quarantined rows, unreadable source); 4 publishing failed.
Errors print one line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="churnseg",
    help="Customer segmentation and churn-risk scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect and check configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; default: the bundled sample config."),
]
_state = {"debug": False}

# Quiet, local defaults for the embedded setup; any value the user set wins.
_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "true",
}


class UsageError(ValueError):
    """A command called with options that do not go together (exit code 2)."""


def _exit_code(exc: BaseException) -> int:
    from churnseg.features.cleaning import DataContractError
    from churnseg.models.registry import NoChampionError
    from churnseg.pipelines.config import ConfigError
    from churnseg.pipelines.monitor import MonitorError
    from churnseg.pipelines.publish import PublishError
    from churnseg.pipelines.sources import SourceError
    from churnseg.pipelines.stages import DataQualityError
    from churnseg.pipelines.stages.allocating import AllocationUnavailableError
    from churnseg.pipelines.stages.intraday import IntradayUnavailableError

    if isinstance(
        exc, ConfigError | UsageError | AllocationUnavailableError | IntradayUnavailableError
    ):
        return 2
    if isinstance(exc, DataContractError | DataQualityError | SourceError | MonitorError):
        return 3
    if isinstance(exc, PublishError):
        return 4
    if type(exc) is LookupError or isinstance(exc, NoChampionError):
        return 2  # nothing to score with, promote or roll back to (not a KeyError bug)
    return 1


# What an MLflow error code means to a user; MLflow's own text names internals.
_MLFLOW_CODES = {
    "RESOURCE_DOES_NOT_EXIST": "a model, version, alias or run it was asked for does not exist",
    "RESOURCE_ALREADY_EXISTS": "something with that name exists already",
    "INVALID_PARAMETER_VALUE": "it refused a value",
    "PERMISSION_DENIED": "permission denied",
}


def user_message(exc: BaseException) -> str:
    """Return what a user is told of an error: the project's own message, or a plain summary.

    MLflow's exception text names REST endpoints and internal ids, so it is replaced by what
    went wrong in plain words (``--debug`` shows the original). Unexpected errors keep their
    type and first line.
    """
    from mlflow.exceptions import MlflowException

    from churnseg.pipelines.config import redact_secrets

    if isinstance(exc, MlflowException):
        import mlflow

        code = str(getattr(exc, "error_code", "") or "")
        what = _MLFLOW_CODES.get(code, f"the request failed ({code or type(exc).__name__})")
        store = redact_secrets(mlflow.get_tracking_uri())
        return f"MLflow store {store}: {what}"
    text = redact_secrets(str(exc).strip())
    if _exit_code(exc) == 1:  # not one of ours: keep it short, --debug has the rest
        first = text.splitlines()[0] if text else ""
        return f"{type(exc).__name__}: {first}".rstrip(": ")
    return text or type(exc).__name__


def _release(exc: BaseException) -> None:
    """Drop the frames an error's traceback keeps alive, and everything they reference.

    A failed stage's frames hold DuckDB connections and Arrow tables; left referenced until
    the interpreter exits, duckdb's bindings print dozens of "nanobind: leaked ..." lines
    after the error line.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    gc.collect()


def _fail(exc: BaseException) -> NoReturn:
    code = _exit_code(exc)
    message = user_message(exc)
    if _state["debug"]:
        # The traceback, then the documented exit code (not Python's 1 for an uncaught error).
        traceback.print_exception(exc, file=sys.stderr)
    _release(exc)
    # markup=False: a message may hold brackets (a regex, a list) that rich would eat.
    err_console.print(
        f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True
    )
    if not _state["debug"]:
        err_console.print("(run with --debug for the traceback)", style="dim", markup=False)
    raise typer.Exit(code)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to write the tables into.")] = Path(
        "data/sample"
    ),
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 3000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    dirty_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of dirty rows to inject.")
    ] = 0.01,
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Write synthetic customers, transactions, events and subscriptions with ground truth.

    Example: churnseg sample --customers 100000 --seed 7 --out data/big
    """
    from churnseg.pipelines.sample import SampleSpec, write_sample

    if file_format not in ("parquet", "csv"):
        _fail(UsageError(f"--format must be parquet or csv, got {file_format!r}"))
    try:
        spec = SampleSpec(
            customers=customers,
            seed=seed,
            dirty_fraction=dirty_fraction,
            file_format=file_format,  # type: ignore[arg-type]
        )
        written = write_sample(spec, out)
    except Exception as exc:
        _fail(exc)
    manifest = json.loads(written["manifest"].read_text())
    table = Table("table", "rows", "file")
    for name, path in written.items():
        if name != "manifest":
            table.add_row(name, f"{manifest['rows'][name]:,}", str(path))
    console.print(table)


def _load(config: Path | None) -> Any:
    from churnseg.pipelines.config import load_config

    try:
        return load_config(config)
    except Exception as exc:
        _fail(exc)


def _print_summary(summary: dict[str, Any]) -> None:
    quality = summary.get("quality", {})
    read = sum(q.rows for q in quality.values())
    quarantined = sum(q.quarantined for q in quality.values())
    table = Table(title="churnseg run", show_header=False)
    table.add_row("rows read", f"{read:,}")
    table.add_row("rows quarantined", f"{quarantined:,}")
    for name, q in quality.items():
        if q.quarantined:
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(q.by_reason.items()))
            table.add_row(f"  {name}", f"{q.quarantined:,} ({reasons})")
    kept = _kept_flags(quality)
    if kept:
        table.add_row("kept and flagged", kept)
    if "k" in summary:
        table.add_row("snapshot", summary["snapshot"])
        for note in summary.get("plan_notes", []):
            table.add_row("", note)
        table.add_row(
            "segments (k)", f"{summary['k']}: {'; '.join(summary['segment_names'].values())}"
        )
        held_out = (
            "held-out customers"
            if summary.get("validation_split") == "customers"
            else "out of time"
        )
        calibration = summary.get("churn_calibration") or "calibrated"
        table.add_row(
            f"validation ({held_out})",
            f"ROC AUC {summary['val_roc_auc']:.3f}, ECE {summary['val_ece']:.3f} "
            f"({summary['churn_candidate']}, calibration {calibration})",
        )
        verdict = "promoted to champion" if summary["churn_promoted"] else "not promoted"
        table.add_row(
            "models",
            f"segmentation v{summary['segmentation_version']} (champion); "
            f"churn v{summary['churn_version']} {verdict}: {summary['churn_decision']}",
        )
        if not summary["churn_promoted"] and summary.get("churn_champion_version"):
            table.add_row(
                "churn champion",
                f"v{summary['churn_champion_version']} ({summary['churn_champion_kind']})",
            )
        dropped = summary.get("churn_dropped_features") or {}
        if dropped:
            table.add_row("features left out", f"{len(dropped)}: {', '.join(sorted(dropped))}")
    if "customers_known" in summary:
        table.add_row(
            "customers",
            f"{summary['customers_known']:,} known, {summary['rows_scored']:,} scored, "
            f"{summary['customers_at_risk']:,} at risk (the rest have churned already)",
        )
    if "allocation" in summary:
        _allocation_rows(table, summary["allocation"])
    table.add_row("rows published", f"{summary['rows_published']:,}")
    table.add_row("output table", summary["table"])
    if summary.get("resumed_stages"):  # a re-run after a failure: say what it did not redo
        table.add_row("reused (earlier attempt)", ", ".join(summary["resumed_stages"]))
    if "mlflow_tracking_uri" in summary:
        table.add_row("MLflow store", summary["mlflow_tracking_uri"])
        table.add_row("MLflow run", summary["mlflow_run_id"])
    console.print(table)


def _allocation_rows(table: Table, allocation: dict[str, Any]) -> None:
    """Add the allocation's figures to a summary table."""
    table.add_row(
        "allocation",
        f"{allocation['customers']:,} customers, {allocation['unassigned']:,} without an owner "
        f"(no capacity); current owners from {allocation['current_from']}",
    )
    table.add_row(
        "  moves",
        f"{allocation['moves_for_rules']:,} for broken rules (budget {allocation['budget']:,}), "
        f"{allocation['forced_moves']:,} forced (owner gone or full)",
    )
    shares = [
        f"{label} {allocation[key]:.1%}"
        for key, label in (
            ("region_match_share", "region matched"),
            ("industry_match_share", "industry matched"),
            ("a_tier_top_seniority_share", "A tier with a senior owner"),
        )
        if allocation.get(key) == allocation.get(key)  # NaN: nobody to measure
    ]
    if shares:
        table.add_row("  match", ", ".join(shares))


def _kept_flags(quality: dict[str, Any]) -> str:
    """Return what cleaning kept but flagged: returns, extreme amounts, stub customers."""
    parts = []
    tx = quality.get("transactions")
    if tx is not None:
        if tx.flagged.get("is_return"):
            parts.append(f"{tx.flagged['is_return']:,} returns (flagged or negative amounts)")
        if tx.flagged.get("is_extreme"):
            parts.append(f"{tx.flagged['is_extreme']:,} extreme amounts")
    customers = quality.get("customers")
    if customers is not None and customers.stubs:
        parts.append(f"{customers.stubs:,} stub customers (ids only other tables know)")
    return "; ".join(parts)


@contextmanager
def _quiet_prefect_console() -> Iterator[None]:
    """Keep Prefect's run logs (and their tracebacks) off the terminal unless ``--debug``.

    The logs still reach the Prefect API (UI); the command prints its own summary or one-line
    error.
    """
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    if _state["debug"]:
        yield
        return
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [
        h
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for h in logger.handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


@contextmanager
def _progress_bars() -> Iterator[None]:
    """Show progress bars of long stages while a flow runs, on an interactive terminal only.

    Piped or redirected output (CI logs, ``> file``) gets no bars: rich would otherwise print
    every refresh as a new line.
    """
    import sys

    from churnseg.pipelines import progress

    if not sys.stdout.isatty() or console.is_dumb_terminal:
        yield
        return
    with progress.RichReporter(console) as reporter, progress.using(reporter):
        yield


def _run_flow(kind: str, config: Path | None, fresh: bool = False) -> None:
    _load(config)  # fail fast with a readable config error before Prefect starts
    from functools import partial

    from churnseg.pipelines import flows

    flow_fn = partial(flows.retrain_flow, fresh=fresh) if kind == "retrain" else flows.score_flow
    try:
        with _quiet_prefect_console(), _progress_bars():
            summary = flow_fn(config_path=str(config) if config else None)
    except Exception as exc:
        _fail(exc)
    _print_summary(summary)


FreshOption = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Recompute every stage; default: reuse the stages an earlier attempt with the same "
        "config, data and code finished (a failed run resumes where it failed).",
    ),
]


@app.command()
def run(config: ConfigOption = None, fresh: FreshOption = False) -> None:
    """Retrain both models on the config's data, then score and publish every customer.

    Run it again after a failure and the finished stages are reused; --fresh recomputes all.

    Example: churnseg run            (the bundled sample, embedded stores under .churnseg/)
    """
    _run_flow("retrain", config, fresh)


@app.command()
def retrain(config: ConfigOption = None, fresh: FreshOption = False) -> None:
    """Run the retrain flow (extract, clean, features, segmentation, churn, score, publish).

    Stages an earlier attempt with the same fingerprint finished are reused unless --fresh.

    Example: churnseg retrain -c configs/default.yaml --fresh
    """
    _run_flow("retrain", config, fresh)


@app.command()
def score(
    config: ConfigOption = None,
    changed: Annotated[
        bool,
        typer.Option(
            "--changed",
            help="Re-score only the customers with rows newer than the latest snapshot (or "
            "missing from it), as of now, and update that snapshot in place (intra-day).",
        ),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="With --changed: the moment to take features at (ISO date-time, UTC); "
            "default now.",
        ),
    ] = None,
) -> None:
    """Score the latest data with the champion models and publish the snapshot.

    --changed publishes an intra-day update of the newest snapshot instead
    (docs/output_tables.md says how readers tell it from a full snapshot).

    Example: churnseg score -c configs/default.yaml --changed
    """
    if not changed:
        if as_of is not None:
            _fail(UsageError("--as-of applies to --changed only"))
        _run_flow("score", config)
        return
    _load(config)
    from datetime import datetime

    from churnseg.pipelines import flows

    try:
        if as_of is not None:
            datetime.fromisoformat(as_of)
    except ValueError:
        _fail(UsageError(f"--as-of {as_of!r} is not an ISO date-time (e.g. 2026-12-06T14:30)"))
    try:
        with _quiet_prefect_console(), _progress_bars():
            summary = flows.score_changed_flow(
                config_path=str(config) if config else None, as_of=as_of
            )
    except Exception as exc:
        _fail(exc)
    table = Table(title="churnseg score --changed", show_header=False)
    table.add_row("snapshot updated", summary["snapshot"])
    table.add_row("features as of", summary["as_of"])
    table.add_row("customers changed", f"{summary['customers_changed']:,}")
    table.add_row("rows published", f"{summary['rows_published']:,}")
    table.add_row("output table", summary["table"])
    table.add_row("MLflow run", summary["mlflow_run_id"])
    console.print(table)


@app.command()
def assign(config: ConfigOption = None) -> None:
    """Allocate the newest published snapshot's customers to owners and publish it.

    Reads the owners (and the CRM's assignments) from the sources; scores are not recomputed.
    Cost model, stability rules and output tables: docs/allocation.md.

    Example: churnseg assign -c configs/default.yaml
    """
    _load(config)
    from churnseg.pipelines import flows

    try:
        with _quiet_prefect_console(), _progress_bars():
            summary = flows.assign_flow(config_path=str(config) if config else None)
    except Exception as exc:
        _fail(exc)
    table = Table(title="churnseg assign", show_header=False)
    table.add_row("snapshot", str(summary["snapshot"]))
    _allocation_rows(table, summary["allocation"])
    table.add_row("rows published", f"{summary['rows_published']:,}")
    table.add_row("output table", summary["table"])
    table.add_row("MLflow run", summary["mlflow_run_id"])
    console.print(table)


@app.command()
def monitor(
    config: ConfigOption = None,
    run_folder: Annotated[
        Path | None,
        typer.Option(help="Reuse this run folder's clean tables and features; default: rebuild."),
    ] = None,
) -> None:
    """Compare today's data with the champion's snapshot and flag drift.

    Feature PSI, churn score drift, segment migration, realised against predicted churn of
    published snapshots whose horizon has passed. A flagged run still exits 0.

    Example: churnseg monitor -c configs/default.yaml
    """
    _load(config)
    from churnseg.pipelines import flows

    try:
        with _progress_bars():
            summary = flows.monitor_flow(
                config_path=str(config) if config else None,
                run_folder=str(run_folder) if run_folder else None,
            )
    except Exception as exc:
        _fail(exc)
    table = Table(title="churnseg monitor", show_header=False)
    table.add_row("snapshot", summary["snapshot"])
    table.add_row("drift", "[bold red]FLAGGED[/]" if summary["flagged"] else "[green]ok[/]")
    for reason in summary["reasons"]:
        table.add_row("", reason)
    table.add_row("score PSI", f"{summary['score']['score_psi']:.3f}")
    table.add_row("moderate drift", ", ".join(summary["features_moderate_drift"]) or "-")
    table.add_row("major drift", ", ".join(summary["features_major_drift"]) or "-")
    table.add_row("changed segment", f"{summary['segment_moved_share']:.1%}")
    table.add_row("matured snapshots", ", ".join(summary["snapshots_matured"]) or "-")
    for row in summary.get("contacts", []):
        difference = row["difference"]
        shown = (
            f"{difference:+.1%} churn when contacted"
            if difference == difference
            else "too few to compare"
        )
        table.add_row(
            f"contacts {row['snapshot_date']} {row['risk_band']}",
            f"{row['contacted']:,} of {row['customers']:,} contacted; {shown} "
            "(an association, not proof: docs/allocation.md)",
        )
    for row in summary.get("corrections", []):
        table.add_row(
            f"corrections {row['field']}",
            f"{row['corrected']:,} customers corrected by people; "
            f"{row['pending']:,} not in the published rows yet (next scoring run)",
        )
    table.add_row("MLflow run", summary["mlflow_run_id"])
    if "retrain" in summary:
        table.add_row("retrain", f"ran: MLflow run {summary['retrain']['mlflow_run_id']}")
    console.print(table)


@app.command()
def report(
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write; default: <state_dir>/report.html.")
    ] = None,
) -> None:
    """Write one self-contained HTML page: segments, churn model, drift, customers at risk.

    Example: churnseg report --out report.html
    """
    cfg = _load(config)
    from churnseg.pipelines.report import build_report

    try:
        written = build_report(cfg, out or cfg.state_dir / "report.html")
    except Exception as exc:
        _fail(exc)
    console.print(f"report written to {written}")


ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Which model: churn or segmentation.")
]


def _model_name(config: Any, model: str) -> str:
    if model not in ("churn", "segmentation"):
        _fail(UsageError(f"--model must be churn or segmentation, got {model!r}"))
    return str(config.mlflow.churn_model if model == "churn" else config.mlflow.segmentation_model)


@app.command()
def promote(
    config: ConfigOption = None,
    model: ModelOption = "churn",
    version: Annotated[
        int | None, typer.Option(help="Version to promote; default: the newest.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote without the validation gate.")
    ] = False,
) -> None:
    """Make a model version champion by hand (the old champion becomes 'previous').

    Retraining promotes automatically when a challenger wins; this overrides that gate and
    records the override in the audit trail.

    Example: churnseg promote --force --model churn --version 7
    """
    if not force:
        _fail(UsageError("promotion by hand bypasses the validation gate: pass --force"))
    cfg = _load(config)
    from mlflow import MlflowClient

    from churnseg.models.registry import promote as promote_version
    from churnseg.pipelines.stages import configure_mlflow

    name = _model_name(cfg, model)
    try:
        configure_mlflow(cfg)
        if version is None:
            versions = MlflowClient().search_model_versions(f"name = '{name}'")
            if not versions:
                raise LookupError(f"no registered versions of {name!r}")
            version = max(int(v.version) for v in versions)
        promote_version(name, version, "forced by churnseg promote --force")
    except Exception as exc:
        _fail(exc)
    console.print(f"{name}: version {version} is champion")


@app.command()
def rollback(config: ConfigOption = None, model: ModelOption = "churn") -> None:
    """Swap the 'champion' and 'previous' aliases of a model (undo the last promotion).

    Example: churnseg rollback --model churn
    """
    cfg = _load(config)
    from churnseg.models.registry import rollback as rollback_model
    from churnseg.pipelines.stages import configure_mlflow

    name = _model_name(cfg, model)
    try:
        configure_mlflow(cfg)
        old, new = rollback_model(name)
    except Exception as exc:
        _fail(exc)
    console.print(f"{name}: champion is version {new} again (was {old})")


@app.command()
def history(config: ConfigOption = None, model: ModelOption = "churn") -> None:
    """Print every promotion, rejection and rollback of a model, oldest first.

    Example: churnseg history --model churn
    """
    cfg = _load(config)
    from churnseg.models.registry import promotion_history
    from churnseg.pipelines.stages import configure_mlflow

    try:
        configure_mlflow(cfg)
        events = promotion_history(_model_name(cfg, model))
    except Exception as exc:
        _fail(exc)
    table = Table("when (UTC)", "version", "event", "reason", "figures (same held-out rows)")
    for event in events:
        gate = event.get("gate") or {}
        figures = ", ".join(f"{k} {v:.4f}" for k, v in gate.items())
        row = [event["at"], str(event["version"]), event["event"], event["reason"], figures]
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


@app.command()
def serve(
    config: ConfigOption = None,
    timezone: Annotated[
        str, typer.Option(help="IANA time zone the schedules are read in.")
    ] = "Europe/Berlin",
) -> None:
    """Run the scheduled deployments from this process: retrain, scoring, intra-day updates.

    Weekly retrain, daily scoring and an intra-day update (score --changed) every 15 minutes.

    Schedules need a Prefect server (the temporary one cannot schedule): start one with
    `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api. Stop with Ctrl-C.

    Example: churnseg serve -c configs/default.yaml --timezone Europe/Berlin
    """
    from prefect.settings import PREFECT_API_URL

    from churnseg.pipelines.config import ConfigError
    from churnseg.pipelines.deployments import DEPLOYMENTS, build_deployments

    _load(config)
    if not PREFECT_API_URL.value():
        _fail(
            ConfigError(
                "PREFECT_API_URL is not set: run `prefect server start` and export "
                "PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        )
    try:
        deployments = build_deployments(str(config) if config else None, timezone)
    except Exception as exc:
        _fail(exc)
    for spec in DEPLOYMENTS:
        console.print(f"{spec.name}: {spec.flow} at cron '{spec.cron}' ({timezone})")
    from prefect import serve as prefect_serve

    prefect_serve(*deployments)


@app.command()
def api(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface; default api.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default api.port.")] = None,
) -> None:
    """Serve customers' classes and scores over HTTP, with rescoring and feedback.

    Needs at least one token in api.tokens (docs/api.md). OpenAPI docs at /docs. Stop with Ctrl-C.

    Example: CHURNSEG_API_TOKEN=$(openssl rand -hex 24) churnseg api --port 8000
    """
    import uvicorn

    from churnseg.pipelines.api import create_app

    loaded = _load(config)
    try:
        service = create_app(loaded)
    except Exception as exc:
        _fail(exc)
    where = f"http://{host or loaded.api.host}:{port or loaded.api.port}"
    console.print(f"churnseg api on {where} (OpenAPI docs at {where}/docs)")
    uvicorn.run(
        service, host=host or loaded.api.host, port=port or loaded.api.port, log_level="warning"
    )


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the resolved configuration as YAML.

    Example: CHURNSEG__SEGMENTATION__K_MAX=6 churnseg config show
    """
    import yaml

    from churnseg.pipelines.config import config_as_dict

    console.print(yaml.safe_dump(config_as_dict(_load(config)), sort_keys=False), end="")


@config_app.command("validate")
def config_validate(config: ConfigOption = None) -> None:
    """Check a configuration file; exit 2 with the offending keys when it is invalid.

    Example: churnseg config validate -c configs/postgres.yaml
    """
    _load(config)
    console.print("config OK")


def main() -> None:
    """Entry point of the ``churnseg`` script."""
    app(prog_name="churnseg")


if __name__ == "__main__":
    main()
