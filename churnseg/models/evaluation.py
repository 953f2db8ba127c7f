"""Metrics for churn scores: ranking, calibration and retention-campaign usefulness."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

RANKING_METRICS = ("roc_auc", "pr_auc", "top_decile_lift", "recall_at_capacity")
PROBABILITY_METRICS = ("brier", "log_loss", "ece")


def expected_calibration_error(y: ArrayLike, proba: ArrayLike, bins: int = 10) -> float:
    """Return the expected calibration error over equal-width probability bins.

    ECE = sum over bins of (rows in bin / rows) * |mean predicted - observed rate|.
    """
    y_arr, p = np.asarray(y, dtype=float), np.asarray(proba, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y_arr[mask].mean())
    return float(total)


def reliability_table(y: ArrayLike, proba: ArrayLike, bins: int = 10) -> pd.DataFrame:
    """Return per probability bin: rows, mean predicted probability, observed churn rate."""
    y_arr, p = np.asarray(y, dtype=float), np.asarray(proba, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": index, "predicted": p, "observed": y_arr})
    table = frame.groupby("bin").agg(
        rows=("observed", "size"), predicted=("predicted", "mean"), observed=("observed", "mean")
    )
    return table.reset_index()


def top_share_mask(scores: ArrayLike, share: float) -> NDArray[np.bool_]:
    """Return a mask of the ``share`` highest scores (at least one row; ties broken by position)."""
    s = np.asarray(scores, dtype=float)
    n = max(1, round(len(s) * share))
    order = np.argsort(-s, kind="stable")
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:n]] = True
    return mask


def lift_at(y: ArrayLike, scores: ArrayLike, share: float) -> float:
    """Return the churn rate among the top ``share`` by score divided by the overall rate."""
    y_arr = np.asarray(y, dtype=float)
    base = y_arr.mean()
    return float(y_arr[top_share_mask(scores, share)].mean() / base) if base > 0 else float("nan")


def recall_at(y: ArrayLike, scores: ArrayLike, share: float) -> float:
    """Return the share of all churners found by contacting the top ``share`` by score."""
    y_arr = np.asarray(y, dtype=float)
    total = y_arr.sum()
    return float(y_arr[top_share_mask(scores, share)].sum() / total) if total > 0 else float("nan")


def ranking_metrics(y: ArrayLike, scores: ArrayLike, capacity: float) -> dict[str, float]:
    """Return ROC AUC, PR AUC, top-decile lift and recall at the contact capacity.

    Works for any score that ranks (probabilities, recency, 1 - P(alive)); NaN when ``y`` has a
    single class.
    """
    y_arr, s = np.asarray(y), np.asarray(scores, dtype=float)
    if len(np.unique(y_arr)) < 2:
        return dict.fromkeys(RANKING_METRICS, float("nan"))
    return {
        "roc_auc": float(roc_auc_score(y_arr, s)),
        "pr_auc": float(average_precision_score(y_arr, s)),
        "top_decile_lift": lift_at(y_arr, s, 0.10),
        "recall_at_capacity": recall_at(y_arr, s, capacity),
    }


def probability_metrics(y: ArrayLike, proba: ArrayLike) -> dict[str, float]:
    """Return Brier score, log loss and expected calibration error of probabilities."""
    y_arr, p = np.asarray(y), np.clip(np.asarray(proba, dtype=float), 1e-6, 1 - 1e-6)
    return {
        "brier": float(brier_score_loss(y_arr, p)),
        "log_loss": float(log_loss(y_arr, p, labels=[0, 1])),
        "ece": expected_calibration_error(y_arr, p),
    }


def metrics_by_group(
    y: ArrayLike, scores: ArrayLike, groups: ArrayLike, capacity: float
) -> pd.DataFrame:
    """Return ranking metrics, churn rate and rows per group (e.g. per segment)."""
    frame = pd.DataFrame({"y": np.asarray(y), "s": np.asarray(scores), "g": np.asarray(groups)})
    rows = []
    for group, part in frame.groupby("g"):
        rows.append(
            {
                "group": group,
                "rows": len(part),
                "churn_rate": float(part.y.mean()),
                **ranking_metrics(part.y, part.s, capacity),
            }
        )
    return pd.DataFrame(rows)


def compare_to_baselines(
    candidate: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]], metric: str
) -> tuple[bool, str]:
    """Return whether the candidate beats every baseline on ``metric``, and the best baseline."""
    best_name = max(baselines, key=lambda name: baselines[name][metric])
    return candidate[metric] > baselines[best_name][metric], best_name
