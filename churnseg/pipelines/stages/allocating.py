"""Allocation stage: the snapshot's scored customers to owners, written beside the scores.

Reads the clean owners (and the CRM's current assignments when configured), the customers'
region and industry attributes and the scores; the current owner comes from the CRM source,
else from the newest published allocation before this snapshot. Writes ``assignments.parquet``
and ``owner_workload.parquet`` in the run folder; the publisher puts them in the database in the
same transaction as the scores (``publish.AllocationFiles``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow.parquet as pq

from churnseg.features.cleaning import DataContractError
from churnseg.models.allocation import (
    AllocationError,
    AllocationWeights,
    allocate,
    allocation_quality,
    owner_workload,
)
from churnseg.pipelines.config import Config
from churnseg.pipelines.publish import AllocationFiles, PublishTarget, qualified, read_table
from churnseg.pipelines.sinks.schema import ASSIGNMENT_SCORE_COLUMNS
from churnseg.pipelines.stages.run_folder import RunPaths

ASSIGNMENTS_FILE = "assignments.parquet"
WORKLOAD_FILE = "owner_workload.parquet"


class AllocationUnavailableError(RuntimeError):
    """Allocation cannot run: no owners configured, or no published scores to allocate."""


@dataclass(frozen=True)
class AllocationOutcome:
    """What the allocation stage decided, for the run summary.

    Attributes:
        files: Where the two output files are (and how owners' rows are protected).
        customers: Customers allocated.
        unassigned: Customers no owner had room for.
        moves_for_rules: Moves away from an active owner that the budget counts.
        forced_moves: Moves forced by an owner leaving, going inactive, or its capacity.
        budget: Moves for broken rules allowed this run.
        current_from: Where the current owners came from (CRM source, published, none).
        quality: ``allocation_quality`` figures.
    """

    files: AllocationFiles
    customers: int
    unassigned: int
    moves_for_rules: int
    forced_moves: int
    budget: int
    current_from: str
    quality: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """Return the figures the CLI prints."""
        return {
            "customers": self.customers,
            "unassigned": self.unassigned,
            "moves_for_rules": self.moves_for_rules,
            "forced_moves": self.forced_moves,
            "budget": self.budget,
            "current_from": self.current_from,
            **{k: v for k, v in self.quality.items() if k.endswith("_share")},
        }


def weights_from_config(config: Config) -> AllocationWeights:
    """Return the cost parts of ``allocation`` in config as the library's weights."""
    w = config.allocation.weights
    try:
        return AllocationWeights(
            region=w.region,
            industry=w.industry,
            seniority=w.seniority,
            move=w.move,
            unassigned=w.unassigned,
            tier_seniority={str(t): level for t, level in config.allocation.tier_seniority.items()},
            priority_buckets=config.allocation.priority_buckets,
        )
    except AllocationError as exc:
        raise DataContractError(str(exc)) from None


def customer_places(config: Config, paths: RunPaths) -> pd.DataFrame:
    """Return customer_id with ``region`` and ``industry`` from the clean customers table.

    A configured column the table lacks is an error; with no customers table both are unknown.

    Raises:
        DataContractError: ``allocation.region_column`` or ``industry_column`` is not a column.
    """
    file = paths.clean / "customers.parquet"
    wanted = {
        "region": config.allocation.region_column,
        "industry": config.allocation.industry_column,
    }
    if not file.exists():
        return pd.DataFrame(columns=["customer_id", "region", "industry"])
    names = pq.ParquetFile(file).schema_arrow.names
    for key, column in wanted.items():
        if column is not None and column not in names:
            raise DataContractError(
                f"table 'customers': allocation.{key}_column {column!r} is not a column "
                f"(it has {sorted(n for n in names if not n.startswith('_'))}); name the "
                f"attribute holding the {key}, or set it to null"
            )
    columns = ["customer_id", *(c for c in wanted.values() if c is not None)]
    frame = pd.read_parquet(file, columns=list(dict.fromkeys(columns)))
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype(str),
            **{
                key: frame[column] if column is not None else None for key, column in wanted.items()
            },
        }
    )


def previous_assignments(target: PublishTarget, snapshot: date) -> pd.Series | None:
    """Return the newest published owner per customer before ``snapshot`` (None: none yet)."""
    table = qualified(target, target.names.customer_assignments)
    rows = read_table(
        target,
        f'SELECT "customer_id", "owner_id" FROM {table} WHERE "snapshot_date" = '
        f'(SELECT MAX("snapshot_date") FROM {table} WHERE "snapshot_date" < ?)',
        (snapshot.isoformat(),),
    )
    if rows.empty:
        return None
    return pd.Series(rows["owner_id"].to_numpy(), index=rows["customer_id"].astype(str))


def current_owners(
    config: Config, paths: RunPaths, target: PublishTarget, snapshot: date
) -> tuple[pd.Series | None, str]:
    """Return the current owner per customer and where it came from.

    The CRM's assignments (a source) win: people change owners there. Without that source,
    the newest published allocation before ``snapshot`` is the current one.
    """
    file = paths.clean / "assignments.parquet"
    if file.exists():
        crm = pd.read_parquet(file, columns=["customer_id", "owner_id"])
        return pd.Series(crm["owner_id"].to_numpy(), index=crm["customer_id"]), "assignments"
    published = previous_assignments(target, snapshot)
    return published, "published" if published is not None else "none"


def allocation_stage(
    config: Config, paths: RunPaths, scores_path: Path, target: PublishTarget, run_id: str
) -> AllocationOutcome:
    """Allocate the newest snapshot's customers in ``scores_path``; write the two files.

    Args:
        config: Run configuration (``allocation`` section).
        paths: The run folder with the clean owners (and customers, assignments).
        scores_path: Scored customers (``customer_scores`` columns).
        target: The output database: the previous allocation is read from it.
        run_id: Recorded on every row (the MLflow run that allocated).

    Raises:
        DataContractError: No clean owners, a missing attribute column, or owners that cannot
            be allocated (repeated ids, bad capacities); the message names table and column.
    """
    owners_file = paths.clean / "owners.parquet"
    if not owners_file.exists():
        raise DataContractError(
            "table 'owners': no clean owners in the run folder; allocation needs sources.owners"
        )
    owners = pd.read_parquet(owners_file)
    scores = pd.read_parquet(
        scores_path, columns=["customer_id", "snapshot_date", *ASSIGNMENT_SCORE_COLUMNS]
    )
    snapshot = max(scores["snapshot_date"])
    scores = scores[scores["snapshot_date"] == snapshot].drop(columns="snapshot_date")
    customers = scores.merge(customer_places(config, paths), on="customer_id", how="left")
    current, current_from = current_owners(config, paths, target, snapshot)
    try:
        result = allocate(
            customers,
            owners,
            current,
            weights_from_config(config),
            config.allocation.max_moves_share,
        )
        assignments = result.assignments.merge(scores, on="customer_id", how="left")
        workload = owner_workload(assignments, owners)
        quality = allocation_quality(assignments, customers, owners)
    except AllocationError as exc:
        raise DataContractError(str(exc)) from None
    files = AllocationFiles(
        assignments=paths.root / ASSIGNMENTS_FILE,
        workload=paths.root / WORKLOAD_FILE,
        role_prefix=config.allocation.owner_role_prefix,
        reader_role=config.allocation.reader_role,
    )
    assignments.assign(snapshot_date=snapshot, run_id=run_id).to_parquet(
        files.assignments, index=False
    )
    workload.assign(snapshot_date=snapshot, run_id=run_id).to_parquet(files.workload, index=False)
    outcome = AllocationOutcome(
        files=files,
        customers=len(assignments),
        unassigned=int(assignments["owner_id"].isna().sum()),
        moves_for_rules=result.moves_for_rules,
        forced_moves=result.forced_moves,
        budget=result.budget,
        current_from=current_from,
        quality=quality,
    )
    _log(outcome, assignments)
    return outcome


def _log(outcome: AllocationOutcome, assignments: pd.DataFrame) -> None:
    """Log the allocation figures and the reasons to the active MLflow run, if any."""
    if mlflow.active_run() is None:
        return
    metrics = {
        f"allocation_{k}": float(v)
        for k, v in {**outcome.quality, **outcome.summary()}.items()
        if isinstance(v, int | float)
    }
    mlflow.log_metrics(metrics)
    reasons = {str(k): int(v) for k, v in assignments["reason"].value_counts().items()}
    mlflow.log_dict(reasons, "allocation/reasons.json")
