"""Churn stage: search, calibration, out-of-time validation, baselines and promotion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from sklearn.inspection import permutation_importance

from churnseg.models import churn as churn_model
from churnseg.models import evaluation, reasons
from churnseg.models.plots import importance_figure, reliability_figure
from churnseg.models.registry import (
    champion_version,
    decide_promotion,
    find_champion,
    load_champion,
    load_version,
    log_and_register,
    promote,
    record_rejection,
)
from churnseg.pipelines.config import Config
from churnseg.pipelines.stages.feature_tables import read_feature_table
from churnseg.pipelines.stages.run_folder import RunPaths
from churnseg.pipelines.stages.segmenting import segment_names


@dataclass(frozen=True)
class ChurnOutcome:
    """What the churn stage registered, how it validated, and whether it became champion."""

    version: int
    promoted: bool
    reason: str
    candidate: str
    metrics: dict[str, float]


EXPLAIN_ARTIFACT = "churn/explain.json"


def at_risk_population(frame: pd.DataFrame, max_recency_days: int | None) -> pd.DataFrame:
    """Return the rows the churn model learns from: bought recently, or not bought yet."""
    if max_recency_days is None:
        return frame
    keep = (frame["recency_days"] <= max_recency_days) | (frame["frequency"] == 0)
    return frame[keep]


def read_at_risk_population(path: Path, max_recency_days: int | None) -> pd.DataFrame:
    """Return ``at_risk_population`` of the feature table at ``path``, filtered while reading.

    At a million customers the stacked training table is over 2 GB as a DataFrame and a third
    of it is long-lapsed: reading only the kept rows saves that copy. Same rows, same order.
    """
    # Missing recency (never bought) fails the first test and passes the second, as in pandas.
    keep = [[("recency_days", "<=", max_recency_days)], [("frequency", "==", 0)]]
    return read_feature_table(path, filters=None if max_recency_days is None else keep)


def _p_alive_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in frame.columns if "p_alive" in c), None)


def churn_stage(config: Config, paths: RunPaths) -> ChurnOutcome:
    """Search, calibrate and validate a churn model out of time; promote it only if it wins.

    Validation rows are the validation cutoff's at-risk population. The challenger must beat
    every baseline (recency alone, BG/NBD P(alive) when present, logistic regression on RFM)
    and the champion, scored on the same rows, by ``churn.promotion_margin``.
    """
    c = config.churn
    name = config.mlflow.churn_model
    max_recency = c.population_max_recency_days
    train = read_at_risk_population(paths.features / "train.parquet", max_recency)
    validation = read_at_risk_population(paths.features / "validation.parquet", max_recency)
    spec = churn_model.feature_spec(train)
    search = churn_model.time_aware_search(
        train, spec, c.candidates, c.search_sample_rows, c.random_state
    )
    model = churn_model.fit_calibrated(
        train,
        spec,
        search.name,
        search.params,
        c.calibration,
        c.random_state,
        c.fit_sample_rows,
        c.calibration_sample_rows,
    )
    y = validation[churn_model.LABEL].to_numpy()
    proba = churn_model.churn_probability(model, validation)
    cap = c.contact_capacity
    metrics = {
        **evaluation.ranking_metrics(y, proba, cap),
        **evaluation.probability_metrics(y, proba),
    }

    baselines = {"recency": evaluation.ranking_metrics(y, validation["recency_days"], cap)}
    p_alive = _p_alive_column(validation)
    if p_alive is not None:
        # BG/NBD says nothing about customers who never bought: rank them at the median.
        alive = validation[p_alive].fillna(validation[p_alive].median())
        baselines["bgnbd_p_alive"] = evaluation.ranking_metrics(y, 1 - alive, cap)
    rfm = churn_model.fit_rfm_baseline(train)
    baselines["logistic_rfm"] = evaluation.ranking_metrics(
        y, churn_model.churn_probability(rfm, validation), cap
    )

    segmenter = load_champion(config.mlflow.segmentation_model)
    seg_names = segment_names(
        config.mlflow.segmentation_model, champion_version(config.mlflow.segmentation_model)
    )
    segments = pd.Series(segmenter.predict(validation)).map(seg_names).fillna("(unnamed)")
    by_segment = evaluation.metrics_by_group(y, proba, segments, cap)
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
        }
    )
    mlflow.log_metrics(
        {
            **{f"val_{k}": v for k, v in metrics.items()},
            **{f"baseline_{b}_{k}": v for b, m in baselines.items() for k, v in m.items()},
            "train_rows": float(len(train)),
            "train_churn_rate": float(train[churn_model.LABEL].mean()),
            "val_rows": float(len(validation)),
            "val_churn_rate": float(y.mean()),
            f"backtest_{metric}_mean": float(folds[metric].mean()),
            f"backtest_{metric}_std": float(folds[metric].std(ddof=0)),
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
    reference = reasons.reference_values(train, spec.columns)
    top = [f for f in importances.feature if f in spec.numeric][: c.reasons_max_features]
    mlflow.log_dict({"reference": reference, "features": top}, EXPLAIN_ARTIFACT)

    version = log_and_register(
        model, name, validation[spec.columns].head(100), churn_model.SKOPS_TYPES, proba[:100]
    )
    champion_score = None
    previous = find_champion(name)
    if previous is not None:
        try:
            champion_proba = churn_model.churn_probability(load_version(name, previous), validation)
            champion_score = evaluation.ranking_metrics(y, champion_proba, cap)[metric]
            mlflow.log_metric(f"champion_{metric}", champion_score)
        except KeyError:
            champion_score = None  # the champion needs features this data no longer has
    best = max(baselines, key=lambda b: baselines[b][metric])
    decision = decide_promotion(
        metric,
        metrics[metric],
        champion_score,
        (best, baselines[best][metric]),
        c.promotion_margin,
    )
    record = {f"val_{k}": v for k, v in metrics.items()}
    if decision.promote:
        promote(name, version, decision.reason, record)
    else:
        record_rejection(name, version, decision.reason, record)
    mlflow.set_tags({"churn.promoted": str(decision.promote), "churn.decision": decision.reason})
    return ChurnOutcome(
        version=version,
        promoted=decision.promote,
        reason=decision.reason,
        candidate=search.name,
        metrics={f"val_{k}": v for k, v in metrics.items()},
    )
