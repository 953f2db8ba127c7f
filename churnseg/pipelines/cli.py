"""The ``churnseg`` command line.

Exit codes: 0 success; 1 unexpected error; 2 bad configuration or usage; 3 unusable input data
(missing columns, too many quarantined rows, unreadable source); 4 publishing failed.
Errors print one line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
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


def _exit_code(exc: BaseException) -> int:
    from churnseg.features.cleaning import DataContractError
    from churnseg.pipelines.config import ConfigError
    from churnseg.pipelines.publish import PublishError
    from churnseg.pipelines.sources import SourceError
    from churnseg.pipelines.stages import DataQualityError

    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, DataContractError | DataQualityError | SourceError):
        return 3
    if isinstance(exc, PublishError):
        return 4
    return 1


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    first = str(exc).strip() or type(exc).__name__
    err_console.print(f"[bold red]error:[/] {first}", highlight=False)
    err_console.print("(run with --debug for the traceback)", style="dim")
    raise typer.Exit(_exit_code(exc))


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
        _fail(ValueError(f"--format must be parquet or csv, got {file_format!r}"))
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
    if "k" in summary:
        table.add_row("snapshot", summary["snapshot"])
        table.add_row(
            "segments (k)", f"{summary['k']}: {', '.join(summary['segment_names'].values())}"
        )
        table.add_row("validation ROC AUC", f"{summary['val_roc_auc']:.3f}")
        table.add_row(
            "models (champion)",
            f"segmentation v{summary['segmentation_version']}, churn v{summary['churn_version']}",
        )
    table.add_row("rows published", f"{summary['rows_published']:,}")
    table.add_row("output table", summary["table"])
    if "mlflow_tracking_uri" in summary:
        table.add_row("MLflow store", summary["mlflow_tracking_uri"])
        table.add_row("MLflow run", summary["mlflow_run_id"])
    console.print(table)


def _run_flow(kind: str, config: Path | None) -> None:
    _load(config)  # fail fast with a readable config error before Prefect starts
    from churnseg.pipelines import flows

    flow_fn = flows.retrain_flow if kind == "retrain" else flows.score_flow
    try:
        summary = flow_fn(config_path=str(config) if config else None)
    except Exception as exc:
        _fail(exc)
    _print_summary(summary)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Retrain both models on the config's data, then score and publish every customer.

    Example: churnseg run            (the bundled sample, embedded stores under .churnseg/)
    """
    _run_flow("retrain", config)


@app.command()
def retrain(config: ConfigOption = None) -> None:
    """Run the retrain flow (extract, clean, features, segmentation, churn, score, publish).

    Example: churnseg retrain -c configs/default.yaml
    """
    _run_flow("retrain", config)


@app.command()
def score(config: ConfigOption = None) -> None:
    """Score the latest data with the champion models and publish the snapshot.

    Example: churnseg score -c configs/default.yaml
    """
    _run_flow("score", config)


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
