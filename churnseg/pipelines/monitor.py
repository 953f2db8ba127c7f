"""Monitoring stages: drift against the champion's snapshot, realised against predicted churn.

Realised churn is measured for published snapshots whose horizon has passed.

The reference ("training snapshot") is the scoring snapshot the champion churn model's retrain
run built (``<run folder>/features/scoring.parquet``): one cutoff, every customer, the same
population definition as the current scoring snapshot. The training table itself stacks
several cutoffs and keeps only the at-risk population, so it would show drift that is only a
difference in definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient

from churnseg.features.labels import LABEL, label_days, label_rule
from churnseg.models import drift
from churnseg.models.churn import churn_probability
from churnseg.models.classification import CHURNED_BAND
from churnseg.models.contacts import CONTACT_COLUMNS, contact_effect
from churnseg.models.feedback import CONTACT, CORRECTABLE, correction_summary
from churnseg.models.registry import champion_version, find_champion, load_champion
from churnseg.models.segmentation import migration_table
from churnseg.pipelines.config import Config
from churnseg.pipelines.publish import (
    PublishTarget,
    qualified,
    read_feedback,
    read_table,
    target_from_config,
)
from churnseg.pipelines.sources import connect_engine, database_url
from churnseg.pipelines.stages import CLEAN_ORDER, RunPaths, read_feature_table, segment_names

RUN_FOLDER_TAG = "churnseg.run_folder"
FLAGGED_TAG = "churnseg.drift_flagged"
ARTIFACTS = "monitoring"
# Identifiers and bookkeeping columns, never features.
_NOT_FEATURES = {"customer_id", "snapshot_date", LABEL}


class MonitorError(RuntimeError):
    """Nothing to compare against: no champion model, or its run folder is gone."""


@dataclass(frozen=True)
class Reference:
    """The champion churn model's retrain run: its MLflow run id and run folder."""

    run_id: str
    version: int
    root: Path

    @property
    def scoring(self) -> Path:
        """Return the reference scoring snapshot."""
        return self.root / "features" / "scoring.parquet"


def reference_run(config: Config) -> Reference:
    """Return the run that trained the current champion churn model.

    The run folder comes from the run's ``churnseg.run_folder`` tag, or is derived from its
    ``prefect.flow_run_id`` tag (``<state_dir>/runs/<id>``) for runs logged before the tag.

    Raises:
        MonitorError: No champion, or its run folder no longer holds the scoring snapshot.
    """
    name = config.mlflow.churn_model
    version = find_champion(name)
    if version is None:
        raise MonitorError(f"model {name!r} has no champion to monitor; run churnseg retrain first")
    client = MlflowClient()
    run_id = client.get_model_version(name, str(version)).run_id or ""
    tags = client.get_run(run_id).data.tags if run_id else {}
    folder = tags.get(RUN_FOLDER_TAG)
    if folder is None:
        folder = str(config.state_dir / "runs" / tags.get("prefect.flow_run_id", "?"))
    reference = Reference(run_id=run_id, version=version, root=Path(folder))
    if not reference.scoring.exists():
        raise MonitorError(
            f"champion {name!r} v{version}: reference snapshot {reference.scoring} is missing "
            "(run folder removed?); retrain to set a new reference"
        )
    return reference


def feature_columns(classifier: Any, frame: pd.DataFrame) -> list[str]:
    """Return the churn model's input features, or every non-key column of ``frame``."""
    columns = list(getattr(classifier, "feature_names_in_", []))
    return columns or [c for c in frame.columns if c not in _NOT_FEATURES]


@dataclass(frozen=True)
class DriftOutcome:
    """Drift of features, churn scores and segments between the reference and current snapshot."""

    feature_psi: pd.DataFrame
    score: dict[str, float]
    migration: pd.DataFrame
    moved_share: float


def drift_stage(config: Config, reference: Path, current: Path) -> DriftOutcome:
    """Compare two scoring snapshots with the champion models.

    Args:
        config: Run configuration (``monitoring`` thresholds and bins, model names).
        reference: The reference scoring feature table.
        current: The current scoring feature table.
    """
    m = config.monitoring
    ref, cur = read_feature_table(reference), read_feature_table(current)
    classifier = load_champion(config.mlflow.churn_model)
    psi = drift.feature_psi(
        ref, cur, feature_columns(classifier, ref), m.psi_thresholds.model_dump(), m.psi_bins
    )
    score = drift.score_drift(
        churn_probability(classifier, ref), churn_probability(classifier, cur), m.psi_bins
    )
    seg_name = config.mlflow.segmentation_model
    segmenter = load_champion(seg_name)
    names = segment_names(seg_name, champion_version(seg_name))
    migration = migration_table(
        ref[["customer_id"]].assign(segment_id=segmenter.predict(ref)),
        cur[["customer_id"]].assign(segment_id=segmenter.predict(cur)),
        names,
    )
    return DriftOutcome(psi, score, migration, drift.moved_share(migration))


def published_scores(config: Config) -> pd.DataFrame:
    """Return customer_id, snapshot_date (date), churn_probability, risk_band ever published.

    An output database without the scores table gives an empty frame.
    """
    columns = ["customer_id", "snapshot_date", "churn_probability", "risk_band"]
    engine = sa.create_engine(database_url(config.publish_url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(
                config.publish.table, schema=config.publish.db_schema
            ):
                return pd.DataFrame(columns=columns)
            table = sa.table(
                config.publish.table,
                *(sa.column(c) for c in columns),
                schema=config.publish.db_schema,
            )
            frame = pd.read_sql(sa.select(table), conn)
    finally:
        engine.dispose()
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.date
    frame["customer_id"] = frame["customer_id"].astype("string")
    return frame


def matured_snapshots(snapshots: list[date], data_end: date, days: int) -> list[date]:
    """Return the snapshots whose label window ``[s, s + days)`` ends by ``data_end``."""
    return sorted(s for s in set(snapshots) if s + timedelta(days=days) <= data_end)


def matured_labels(config: Config, current: RunPaths, data_end: date) -> pd.DataFrame:
    """Return published rows of matured snapshots with their realised label (``LABEL``).

    The realised label is the configured label rule (``features.labels``) applied to the current
    clean tables at the published snapshot date; ``data_end`` is the current scoring cutoff
    (the day after the last clean purchase). Columns: customer_id, snapshot_date,
    churn_probability, risk_band, ``LABEL``.
    """
    published = published_scores(config)
    has_subs = (current.clean / "subscriptions.parquet").exists()
    horizon = config.snapshots.horizon_days
    span = label_days(config.features, horizon, has_subs)
    snapshots = matured_snapshots(list(published.snapshot_date.unique()), data_end, span)
    if not snapshots:
        return pd.DataFrame(
            columns=["customer_id", "snapshot_date", "churn_probability", "risk_band", LABEL]
        )
    con = connect_engine(config.engine)
    tables = {
        name: con.read_parquet(current.clean / f"{name}.parquet")
        for name in CLEAN_ORDER
        if (current.clean / f"{name}.parquet").exists()
    }
    parts = []
    for snapshot in snapshots:
        rows = published[published.snapshot_date == snapshot]
        population = con.create_table(
            "_monitor_population", rows[["customer_id"]], temp=True, overwrite=True
        )
        rule = label_rule(tables, snapshot, config.features, horizon)
        labels = con.execute(rule.attach(population))
        parts.append(rows.merge(labels, on="customer_id", how="left"))
    return pd.concat(parts, ignore_index=True)


def calibration_stage(labelled: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Return realised against predicted churn for each matured published snapshot."""
    return drift.realised_vs_predicted(
        labelled[["snapshot_date", "churn_probability", LABEL]],
        config.monitoring.calibration_tolerance,
    )


def _naive_utc(moments: pd.Series) -> pd.Series:
    """Return timestamps as naive UTC (zoned ones converted, naive ones taken as UTC)."""
    parsed = pd.to_datetime(moments, utc=True)
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None)


def contacts_stage(
    labelled: pd.DataFrame, config: Config, current: RunPaths, feedback: pd.DataFrame
) -> pd.DataFrame:
    """Return churn among contacted against uncontacted customers per snapshot and risk band.

    Reads the clean ``contact_outcomes`` (a source) and the contacts people sent to the API
    (``customer_feedback`` kind ``contact``); empty when there are none. What this can and
    cannot show: ``churnseg.models.contacts``.
    """
    file = current.clean / "contact_outcomes.parquet"
    sent = feedback[feedback["kind"] == CONTACT][["customer_id", "contacted_at"]]
    if (not file.exists() and sent.empty) or labelled.empty:
        return contact_effect(labelled.iloc[0:0], pd.DataFrame(), 0)
    parts = [sent.assign(contacted_at=pd.to_datetime(sent["contacted_at"], utc=True))]
    if file.exists():
        parts.append(pd.read_parquet(file, columns=["customer_id", "contacted_at"]))
    # Both sources as naive UTC, like every clean timestamp.
    contacts = pd.concat(
        [p.assign(contacted_at=_naive_utc(p["contacted_at"])) for p in parts], ignore_index=True
    )
    has_subs = (current.clean / "subscriptions.parquet").exists()
    window = label_days(config.features, config.snapshots.horizon_days, has_subs)
    at_risk = labelled[labelled["risk_band"].notna() & (labelled["risk_band"] != CHURNED_BAND)]
    return contact_effect(at_risk, contacts, window, label=LABEL)


@dataclass(frozen=True)
class MonitorOutcome:
    """Everything a monitoring run measured, and why it is flagged (empty: not flagged)."""

    drift: DriftOutcome
    calibration: pd.DataFrame
    reasons: list[str] = field(default_factory=list)
    contacts: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(CONTACT_COLUMNS))
    )
    # People's corrections per class: customers corrected, and not yet shown in published rows.
    corrections: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["field", "corrected", "pending"])
    )

    @property
    def flagged(self) -> bool:
        """Return True when any threshold was crossed."""
        return bool(self.reasons)


def flag_reasons(config: Config, outcome: DriftOutcome, calibration: pd.DataFrame) -> list[str]:
    """Return one line per crossed threshold (major feature PSI, score PSI, calibration gap)."""
    m = config.monitoring
    reasons = [
        f"feature {r.feature}: PSI {r.psi:.3f} >= {m.psi_thresholds.major}"
        for r in outcome.feature_psi.itertuples()
        if r.severity == "major"
    ]
    if outcome.score["score_psi"] >= m.score_psi_threshold:
        reasons.append(
            f"churn score: PSI {outcome.score['score_psi']:.3f} >= {m.score_psi_threshold}"
        )
    reasons += [
        f"snapshot {r.snapshot_date}: realised churn {r.realised_rate:.3f} vs predicted "
        f"{r.predicted_rate:.3f} (gap above {m.calibration_tolerance})"
        for r in calibration.itertuples()
        if r.flagged
    ]
    return reasons


def _published_classes(target: PublishTarget) -> pd.DataFrame:
    """Return the correctable classes of the newest published rows."""
    view = qualified(target, target.names.latest_view)
    return read_table(target, f"SELECT customer_id, {', '.join(CORRECTABLE)} FROM {view}")


def monitor_stage(
    config: Config, reference: Reference, current: RunPaths, data_end: date
) -> MonitorOutcome:
    """Measure drift and calibration, flag crossed thresholds, and log all to the active run."""
    outcome = drift_stage(config, reference.scoring, current.features / "scoring.parquet")
    labelled = matured_labels(config, current, data_end)
    calibration = calibration_stage(labelled, config)
    target = target_from_config(config)
    feedback = read_feedback(target)
    contacts = contacts_stage(labelled, config, current, feedback)
    result = MonitorOutcome(
        outcome,
        calibration,
        flag_reasons(config, outcome, calibration),
        contacts,
        correction_summary(feedback, _published_classes(target)),
    )
    if mlflow.active_run() is not None:
        _log_monitoring(reference, result)
    return result


def _log_monitoring(reference: Reference, result: MonitorOutcome) -> None:
    d = result.drift
    metrics = dict(zip(d.feature_psi.feature.map("psi_{}".format), d.feature_psi.psi, strict=True))
    metrics |= {k: v for k, v in d.score.items() if pd.notna(v)}
    metrics |= {
        "psi_max": float(d.feature_psi.psi.to_numpy(float).max()) if len(d.feature_psi) else 0.0,
        "features_major_drift": float((d.feature_psi.severity == "major").sum()),
        "features_moderate_drift": float((d.feature_psi.severity == "moderate").sum()),
        "segment_moved_share": d.moved_share,
        "snapshots_matured": float(len(result.calibration)),
        "drift_flagged": float(result.flagged),
    }
    if len(result.calibration):
        metrics["calibration_max_abs_gap"] = float(
            result.calibration.gap.abs().to_numpy(float).max()
        )
    mlflow.log_metrics(metrics)
    mlflow.set_tags(
        {
            FLAGGED_TAG: str(result.flagged).lower(),
            "churnseg.reference_run_id": reference.run_id,
            "churnseg.reference_churn_version": str(reference.version),
        }
    )
    mlflow.log_table(d.feature_psi, f"{ARTIFACTS}/feature_psi.json")
    mlflow.log_table(d.migration, f"{ARTIFACTS}/migration.json")
    mlflow.log_table(
        result.calibration.astype({"snapshot_date": str}), f"{ARTIFACTS}/calibration.json"
    )
    if len(result.corrections):
        mlflow.log_metrics(
            {
                f"corrections_{field}": float(corrected)
                for field, corrected in zip(
                    result.corrections["field"], result.corrections["corrected"], strict=True
                )
            }
        )
    if len(result.contacts):
        mlflow.log_table(
            result.contacts.astype({"snapshot_date": str}), f"{ARTIFACTS}/contacts.json"
        )
    mlflow.log_dict(monitor_summary(result), f"{ARTIFACTS}/summary.json")


def monitor_summary(result: MonitorOutcome) -> dict[str, Any]:
    """Return the monitoring result as plain values (for the CLI, MLflow and the report)."""
    d = result.drift
    return {
        "flagged": result.flagged,
        "reasons": result.reasons,
        "score": d.score,
        "segment_moved_share": d.moved_share,
        "features_major_drift": d.feature_psi.loc[d.feature_psi.severity == "major", "feature"]
        .astype(str)
        .tolist(),
        "features_moderate_drift": d.feature_psi.loc[
            d.feature_psi.severity == "moderate", "feature"
        ]
        .astype(str)
        .tolist(),
        "snapshots_matured": [str(s) for s in result.calibration.snapshot_date],
        "contacts": [
            {k: (str(v) if k == "snapshot_date" else v) for k, v in row.items()}
            for row in result.contacts.to_dict("records")
        ],
        "corrections": result.corrections.to_dict("records"),
    }
