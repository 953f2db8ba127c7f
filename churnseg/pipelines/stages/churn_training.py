"""Churn stage: search, calibration, out-of-time validation, baselines and promotion."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from sklearn.inspection import permutation_importance

from churnseg.features.labels import AT_RISK, label_days
from churnseg.models import churn as churn_model
from churnseg.models import evaluation, reasons
from churnseg.models.calibration import CalibratedChurnModel
from churnseg.models.plots import importance_figure, reliability_figure
from churnseg.models.registry import (
    CHALLENGER,
    decide_promotion,
    find_champion,
    load_version,
    log_and_register,
    promote,
    record_rejection,
)
from churnseg.pipelines.config import Config
from churnseg.pipelines.frames import frame_of, read_feature_table
from churnseg.pipelines.stages.run_folder import RunPaths
from churnseg.pipelines.stages.segmenting import (
    register_segmentation,
    segment_names,
    trained_segmentation,
)


@dataclass(frozen=True)
class ChurnOutcome:
    """What the churn stage registered, how it validated, and which model is champion now.

    ``version`` is the challenger's registered version; ``champion_version`` the churn model
    scoring uses after this stage (the challenger, a promoted baseline, or the old champion),
    ``champion_kind`` says which ("challenger", "baseline <name>" or "previous champion").
    """

    version: int
    promoted: bool
    reason: str
    candidate: str
    metrics: dict[str, float]
    champion_version: int | None = None
    champion_kind: str = "challenger"
    segmentation_version: int | None = None
    dropped_features: dict[str, str] = field(default_factory=dict)
    calibration: str = ""


EXPLAIN_ARTIFACT = "churn/explain.json"


def population_recency_limit(config: Config) -> int | None:
    """Return the recency beyond which a customer is not at risk (inactivity labels only).

    With inactivity labels, a customer who has not bought for longer than
    ``churn.population_max_recency_days`` has churned already. Contract and column labels say
    who is at risk themselves (an active contract, a labelled row): no recency limit.
    """
    if config.features.label != "inactivity":
        return None
    return config.churn.population_max_recency_days


def at_risk_population(frame: pd.DataFrame, max_recency_days: int | None) -> pd.DataFrame:
    """Return the rows the churn model learns from: bought recently, or not bought yet."""
    return frame[at_risk_mask(frame, max_recency_days)]


def at_risk_mask(frame: pd.DataFrame, max_recency_days: int | None) -> NDArray[np.bool_]:
    """Return which rows can still churn: the ``at_risk`` flag, and bought recently or never.

    The same rule picks the training rows and the customers scoring ranks; the others have
    churned already (a contract ended, long lapsed).
    """
    keep = np.ones(len(frame), dtype=bool)
    if AT_RISK in frame.columns:
        keep &= frame[AT_RISK].fillna(False).to_numpy(dtype=bool)
    if max_recency_days is not None and "recency_days" in frame.columns:
        recent = (frame["recency_days"] <= max_recency_days).fillna(False).to_numpy(dtype=bool)
        never = (frame["frequency"] == 0).fillna(True).to_numpy(dtype=bool)
        keep &= recent | never
    return keep


# Rows per batch when a sample of a feature table is read, and its row-position column.
_READ_BATCH_ROWS = 65_536
_POSITION = "__position"


def read_at_risk_population(
    path: Path, max_recency_days: int | None, max_rows: int | None = None, random_state: int = 0
) -> pd.DataFrame:
    """Return ``at_risk_population`` of the feature table at ``path``, filtered while reading.

    At a million customers the stacked training table is over 2 GB as a DataFrame and a third
    of it is long-lapsed: reading only the kept rows saves that copy. Same rows, same order.

    ``max_rows``: when more rows are kept, a seeded sample of that many (in file order, about
    the same share of every cutoff), read batch by batch so the whole table is never in memory.
    """
    file = pq.ParquetFile(path)
    rows = file.metadata.num_rows
    # Missing recency (never bought) fails the first test and passes the second, as in pandas.
    keep = [[("recency_days", "<=", max_recency_days)], [("frequency", "==", 0)]]
    use = max_recency_days is not None and "recency_days" in file.schema_arrow.names
    if max_rows is None or rows <= max_rows:
        return read_feature_table(path, filters=keep if use else None)
    mask = np.ones(rows, dtype=bool)
    if use:  # the same filter, on the two columns it reads, with each row's position
        rule = file.read(columns=["recency_days", "frequency"])
        rule = rule.append_column(_POSITION, pa.array(np.arange(rows)))
        kept = rule.filter(pq.filters_to_expression(keep))[_POSITION].to_numpy()
        mask = np.zeros(rows, dtype=bool)
        mask[kept] = True
    positions = churn_model.sample_positions(mask, max_rows, random_state)
    batches, start = [], 0
    for batch in file.iter_batches(batch_size=_READ_BATCH_ROWS):
        lo, hi = np.searchsorted(positions, [start, start + batch.num_rows])
        if hi > lo:
            batches.append(batch.take(pa.array(positions[lo:hi] - start)))
        start += batch.num_rows
    return frame_of(pa.Table.from_batches(batches, schema=file.schema_arrow))


def _segmenter(config: Config, paths: RunPaths) -> tuple[Any, dict[int, str]] | None:
    """Return the segmentation model this run trained (else the champion) and its names."""
    trained = trained_segmentation(paths)
    if trained is not None:
        return mlflow.sklearn.load_model(trained[0]), trained[1]
    name = config.mlflow.segmentation_model
    version = find_champion(name)
    if version is None:
        return None
    return load_version(name, version), segment_names(name, version)


def _label_days(config: Config, paths: RunPaths) -> int:
    """Return the days a label reads after its cutoff (the plan's spacing)."""
    has_subscriptions = (paths.clean / "subscriptions.parquet").exists()
    return label_days(config.features, config.snapshots.horizon_days, has_subscriptions)


def churn_stage(config: Config, paths: RunPaths) -> ChurnOutcome:
    """Search, calibrate and validate a churn model out of time; register and promote the winner.

    Validation rows are the validation cutoff's at-risk population. The challenger, every
    baseline (recency alone, logistic regression on RFM, BG/NBD P(alive), each where its
    columns exist; fitted and calibrated the same way) and the champion are scored on the same
    rows. The challenger must beat the best baseline, else that baseline is the contender; the
    contender is promoted when there is no champion yet, or when it beats the champion by
    ``churn.promotion_margin``. So the first run always ends with a champion, and a later losing
    contender leaves the champion in place. The segmentation model this run trained is
    registered and promoted here too, once everything else succeeded: a retrain that fails
    registers nothing.
    """
    c = config.churn
    name = config.mlflow.churn_model
    max_recency = population_recency_limit(config)
    gap = _label_days(config, paths)
    # A seed of its own (the samples drawn from this frame use random_state up to + 4).
    train = read_at_risk_population(
        paths.features / "train.parquet", max_recency, c.train_max_rows, c.random_state + 5
    )
    validation = read_at_risk_population(paths.features / "validation.parquet", max_recency)
    spec, dropped, season = churn_model.model_inputs(train)
    search = churn_model.time_aware_search(
        train, spec, c.candidates, c.search_sample_rows, c.random_state, gap
    )

    def calibrated(
        fit_spec: churn_model.FeatureSpec, kind: str, params: dict[str, Any]
    ) -> CalibratedChurnModel:
        return churn_model.fit_calibrated(
            train,
            fit_spec,
            kind,
            params,
            c.calibration,
            c.random_state,
            c.fit_sample_rows,
            c.calibration_sample_rows,
            gap,
        )

    def refitted(
        rows: churn_model.RefitRows,
        fit_spec: churn_model.FeatureSpec,
        kind: str,
        params: dict[str, Any],
    ) -> CalibratedChurnModel:
        return churn_model.refit_calibrated(
            rows,
            fit_spec,
            kind,
            params,
            c.calibration,
            c.random_state,
            c.calibration_sample_rows,
            c.search_sample_rows,
        )

    model = calibrated(spec, search.name, search.params)
    y = validation[churn_model.LABEL].to_numpy()
    cap = c.contact_capacity

    def judged(candidate: Any) -> tuple[NDArray[np.float64], dict[str, float]]:
        proba = churn_model.churn_probability(candidate, validation)
        ranking = evaluation.ranking_metrics(y, proba, cap)
        return proba, {**ranking, **evaluation.probability_metrics(y, proba)}

    proba, metrics = judged(model)
    baseline_models: dict[str, Any] = {}
    baselines: dict[str, dict[str, float]] = {}
    baseline_specs = churn_model.baseline_specs(spec)
    for baseline, baseline_spec in baseline_specs.items():
        fitted = calibrated(baseline_spec, "logreg", churn_model.BASELINE_PARAMS)
        baseline_models[baseline] = fitted
        baselines[baseline] = judged(fitted)[1]

    segmenter = _segmenter(config, paths)
    if segmenter is not None:
        segments = pd.Series(segmenter[0].predict(validation)).map(segmenter[1])
        by_segment = evaluation.metrics_by_group(y, proba, segments.fillna("(unnamed)"), cap)
    else:
        by_segment = pd.DataFrame()
    folds = churn_model.backtest(
        train,
        spec,
        search.name,
        search.params,
        cap,
        c.search_sample_rows,
        c.random_state,
        later=validation,
        search=search,
        label_days=gap,
        compare_newest=True,
    )
    # Importance of the ranking model: calibration is monotone, so the ROC AUC drop is the same,
    # and skipping the calibrator halves the cost of the many predictions this takes.
    sample = validation.sample(n=min(len(validation), 3000), random_state=c.random_state)
    importance = permutation_importance(
        churn_model.ranking_model(model),
        sample[spec.columns],
        sample[churn_model.LABEL],
        scoring="roc_auc",
        n_repeats=2,
        random_state=c.random_state,
    )
    importances = pd.DataFrame(
        {"feature": spec.columns, "importance": importance.importances_mean}
    ).sort_values("importance", ascending=False)

    metric = c.promotion_metric
    mlflow.log_params(
        {
            "churn_candidate": search.name,
            "churn_params": json.dumps(search.params),
            "churn_calibration": c.calibration,
            "churn_features": len(spec.columns),
            "churn_selection_split": search.split,
            "churn_seasonality": season,
            "churn_features_dropped": len(dropped),
            "churn_calibration_chosen": model.method_,
            "churn_refit_on_latest": c.refit_on_latest,
        }
    )
    mlflow.log_dict(model.losses_, "churn/calibration_log_loss.json")
    mlflow.log_dict(dropped, "churn/dropped_features.json")
    mlflow.log_metrics(
        {
            **{f"val_{k}": v for k, v in metrics.items()},
            **{f"baseline_{b}_{k}": v for b, m in baselines.items() for k, v in m.items()},
            "train_rows": float(len(train)),
            "train_churn_rate": float(train[churn_model.LABEL].mean()),
            "val_rows": float(len(validation)),
            "val_churn_rate": float(y.mean()),
            **_backtest_metrics(folds, metric),
        }
    )
    mlflow.log_table(pd.DataFrame(search.trials).astype({"params": str}), "churn/search.json")
    mlflow.log_table(folds, "churn/backtest.json")
    mlflow.log_table(by_segment, "churn/metrics_by_segment.json")
    mlflow.log_dict(baselines, "churn/baselines.json")
    mlflow.log_table(importances, "churn/permutation_importance.json")
    reliability = evaluation.reliability_table(y, proba)
    mlflow.log_table(reliability, "churn/reliability.json")
    mlflow.log_figure(reliability_figure(reliability), "churn/reliability.png")
    mlflow.log_figure(importance_figure(importances), "churn/permutation_importance.png")
    reference = reasons.reference_values(train, spec.columns, train[churn_model.LABEL])
    inputs = set(spec.numeric) | set(spec.categorical)  # not the season: nobody can act on it
    top = [f for f in importances.feature if f in inputs][: c.reasons_max_features]
    mlflow.log_dict({"reference": reference, "features": top}, EXPLAIN_ARTIFACT)

    champion_score = None
    previous = find_champion(name)
    if previous is not None:
        try:
            champion_proba = churn_model.churn_probability(load_version(name, previous), validation)
            champion_score = evaluation.ranking_metrics(y, champion_proba, cap)[metric]
            mlflow.log_metric(f"champion_{metric}", champion_score)
        except KeyError:
            champion_score = None  # the champion needs features this data no longer has
    decision = decide_promotion(
        metric,
        metrics[metric],
        champion_score,
        {b: m[metric] for b, m in baselines.items()},
        c.promotion_margin,
    )
    gate = {
        "metric": metric,
        "challenger": {"candidate": search.name, **metrics},
        "baselines": baselines,
        "champion": None if previous is None else {"version": previous, metric: champion_score},
        "winner": decision.winner,
        "reason": decision.reason,
    }
    mlflow.log_dict(gate, "churn/promotion_gate.json")

    # The scored model learns from the newest labels too; the figures above stay those of the
    # model that did not see the validation cutoff.
    refit = None
    if c.refit_on_latest:
        refit = churn_model.refit_rows(train, validation, c.fit_sample_rows, c.random_state)
        # Nothing below reads the training frame (1 GB at a million customers): let it go
        # before the refit's final fit, which was the stage's largest moment.
        del train
        model = refitted(refit, spec, search.name, search.params)
        # Chosen again on the refit's out-of-fold values: the calibration that scores.
        mlflow.log_param("churn_calibration_scored", model.method_)
    # Registration last: everything above can fail without leaving a version behind.
    version = log_and_register(
        model, name, validation[spec.columns].head(100), churn_model.SKOPS_TYPES, proba[:100]
    )
    record = {f"val_{k}": v for k, v in metrics.items()}
    # What the gate compared, on the same rows: kept with the audit, shown by `churnseg history`.
    figures = {CHALLENGER: metrics[metric], **{b: m[metric] for b, m in baselines.items()}}
    if champion_score is not None:
        figures[f"champion v{previous}"] = champion_score
    champion, kind = previous, "previous champion"
    if decision.winner == CHALLENGER:
        promote(name, version, decision.reason, record, figures)
        champion, kind = version, "challenger"
    else:
        record_rejection(name, version, decision.reason, record, figures)
        if decision.winner is not None:
            chosen = baseline_models[decision.winner]
            baseline_spec = baseline_specs[decision.winner]
            if refit is not None:  # the same customers as the challenger's refit
                chosen = refitted(refit, baseline_spec, "logreg", churn_model.BASELINE_PARAMS)
            columns = baseline_spec.columns
            champion = log_and_register(
                chosen, name, validation[columns].head(100), churn_model.SKOPS_TYPES
            )
            scores = {f"val_{k}": v for k, v in baselines[decision.winner].items()}
            promote(name, champion, decision.reason, scores, figures)
            kind = f"baseline {decision.winner}"
    segmentation_version = (
        register_segmentation(config, paths) if trained_segmentation(paths) else None
    )
    mlflow.set_tags(
        {
            "churn.promoted": str(decision.promote),
            "churn.decision": decision.reason,
            "churn.champion": kind,
        }
    )
    return ChurnOutcome(
        version=version,
        promoted=decision.winner == CHALLENGER,
        reason=decision.reason,
        candidate=search.name,
        metrics={f"val_{k}": v for k, v in metrics.items()},
        champion_version=champion,
        champion_kind=kind,
        segmentation_version=segmentation_version,
        dropped_features=dropped,
        calibration=model.method_,
    )


def _backtest_metrics(folds: pd.DataFrame, metric: str) -> dict[str, float]:
    """Return the backtest's mean and spread of ``metric``, and what the newest labels gain.

    ``backtest_refit_gain`` is the mean ROC AUC of the folds minus the same folds fitted without
    their newest matured cutoff (``refit_on_latest``'s evidence; none without such folds).
    """
    if folds.empty:
        return {}
    out = {
        f"backtest_{metric}_mean": float(folds[metric].mean()),
        f"backtest_{metric}_std": float(folds[metric].std(ddof=0)),
    }
    if "roc_auc_without_newest" in folds:
        gain = (folds["roc_auc"] - folds["roc_auc_without_newest"]).dropna()
        if len(gain):
            out["backtest_refit_gain"] = float(gain.mean())
            out["backtest_refit_folds"] = float(len(gain))
    return out
