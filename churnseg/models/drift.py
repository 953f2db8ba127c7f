"""Drift measures between a reference snapshot and a current one (pure functions, no I/O).

Population stability index (PSI) of one variable, with bins fixed on the reference:

* numeric: edges are the reference's quantiles at ``1/bins, 2/bins, ...`` (duplicates dropped, so
  a variable with few distinct values gets fewer bins); bins are right-closed
  ``(-inf, e1], (e1, e2], ..., (ek, +inf)``, so every current value falls in some bin;
* categorical (text, bool, category): one bin per reference level plus one for levels the
  reference never saw;
* missing values (null, NaN) form a bin of their own on both sides.

``PSI = sum over bins of (cur - ref) * ln(cur / ref)`` on the bins' shares, with every share
floored at ``epsilon`` so an empty bin gives a large but finite term. PSI is 0 for identical
distributions and positive otherwise. Conventional reading: below 0.1 stable, 0.1-0.25 a
moderate shift, above 0.25 a major one (the thresholds are configuration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from churnseg.models.evaluation import expected_calibration_error

DEFAULT_BINS = 10
EPSILON = 1e-4
SEVERITIES = ("none", "moderate", "major")


def psi_from_shares(reference: ArrayLike, current: ArrayLike, epsilon: float = EPSILON) -> float:
    """Return the PSI of two share vectors over the same bins (each sums to 1)."""
    ref = np.maximum(np.asarray(reference, dtype=float), epsilon)
    cur = np.maximum(np.asarray(current, dtype=float), epsilon)
    if ref.shape != cur.shape:
        raise ValueError(f"share vectors differ in length: {ref.shape} and {cur.shape}")
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(reference: ArrayLike, bins: int = DEFAULT_BINS) -> NDArray[np.float64]:
    """Return the interior bin edges: the reference's distinct quantiles at ``i / bins``."""
    values = np.asarray(reference, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def numeric_shares(values: ArrayLike, edges: ArrayLike) -> NDArray[np.float64]:
    """Return the shares of ``values`` in the right-closed bins of ``edges``, missing last."""
    v = np.asarray(values, dtype=float)
    missing = np.isnan(v)
    e = np.asarray(edges, dtype=float)
    index = np.searchsorted(e, v[~missing], side="left")
    counts = np.bincount(index, minlength=e.size + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return np.asarray(counts / max(v.size, 1), dtype=np.float64)


def numeric_psi(
    reference: ArrayLike, current: ArrayLike, bins: int = DEFAULT_BINS, epsilon: float = EPSILON
) -> float:
    """Return the PSI of a numeric variable over quantile bins of the reference."""
    edges = quantile_edges(reference, bins)
    return psi_from_shares(
        numeric_shares(reference, edges), numeric_shares(current, edges), epsilon
    )


def categorical_psi(reference: pd.Series, current: pd.Series, epsilon: float = EPSILON) -> float:
    """Return the PSI of a categorical variable: a bin per reference level, unseen, missing."""
    ref_text = reference.astype("string")
    levels = sorted(ref_text.dropna().unique())

    def shares(s: pd.Series) -> NDArray[np.float64]:
        text = s.astype("string")
        counts = [float((text == level).sum()) for level in levels]
        unseen = float((text.notna() & ~text.isin(levels)).sum())
        counts += [unseen, float(text.isna().sum())]
        return np.asarray(counts) / max(len(s), 1)

    return psi_from_shares(shares(reference), shares(current), epsilon)


def is_categorical(series: pd.Series) -> bool:
    """Return True for text, boolean and category columns (binned by level, not quantile)."""
    return bool(
        pd.api.types.is_string_dtype(series)
        or pd.api.types.is_bool_dtype(series)
        or isinstance(series.dtype, pd.CategoricalDtype)
        or series.dtype == object
    )


def severity(value: float, thresholds: Mapping[str, float]) -> str:
    """Return ``major``, ``moderate`` or ``none`` for a PSI given the per-severity thresholds."""
    if value >= thresholds["major"]:
        return "major"
    if value >= thresholds["moderate"]:
        return "moderate"
    return "none"


def feature_psi(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    thresholds: Mapping[str, float],
    bins: int = DEFAULT_BINS,
) -> pd.DataFrame:
    """Return one row per feature: ``feature``, ``kind``, ``psi``, ``severity``; worst first.

    Raises:
        KeyError: A column is missing from either table (the message names it and the table).
    """
    rows = []
    for column in columns:
        for name, frame in (("reference", reference), ("current", current)):
            if column not in frame.columns:
                raise KeyError(f"{name} snapshot ({len(frame)} rows) has no column {column!r}")
        ref, cur = reference[column], current[column]
        if is_categorical(ref):
            kind, value = "categorical", categorical_psi(ref, cur)
        else:
            kind = "numeric"
            value = numeric_psi(ref.astype("float64"), cur.astype("float64"), bins)
        rows.append(
            {"feature": column, "kind": kind, "psi": value, "severity": severity(value, thresholds)}
        )
    table = pd.DataFrame(rows, columns=["feature", "kind", "psi", "severity"])
    return table.sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)


def score_drift(
    reference: ArrayLike, current: ArrayLike, bins: int = DEFAULT_BINS
) -> dict[str, float]:
    """Return PSI, mean of each side and the mean shift of two churn score distributions."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    return {
        "score_psi": numeric_psi(ref, cur, bins),
        "score_mean_reference": float(ref.mean()) if len(ref) else float("nan"),
        "score_mean_current": float(cur.mean()) if len(cur) else float("nan"),
        "score_mean_shift": float(cur.mean() - ref.mean()) if len(ref) and len(cur) else 0.0,
    }


def moved_share(migration: pd.DataFrame) -> float:
    """Return the share of customers in both snapshots whose segment changed.

    Args:
        migration: A ``segmentation.migration_table`` (segment -1 marks new or gone customers).
    """
    both = migration[(migration.segment_id_from >= 0) & (migration.segment_id_to >= 0)]
    total = both.customers.sum()
    moved = both.loc[both.segment_id_from != both.segment_id_to, "customers"].sum()
    return float(moved / total) if total else 0.0


def realised_vs_predicted(scored: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Return per snapshot: customers, mean predicted probability, realised churn rate, gap.

    Args:
        scored: ``snapshot_date``, ``churn_probability`` and the realised ``churned`` (0/1) per
            customer; rows with a null label (not at risk) are left out.
        tolerance: Largest accepted absolute gap between realised rate and mean prediction.

    Returns:
        Columns ``snapshot_date``, ``customers``, ``predicted_rate``, ``realised_rate``,
        ``gap`` (realised minus predicted), ``ece`` and ``flagged`` (abs gap above tolerance).
    """
    known = scored.dropna(subset=["churned"])
    rows = []
    for snapshot, part in known.groupby("snapshot_date", sort=True):
        y, p = part["churned"].to_numpy(float), part["churn_probability"].to_numpy(float)
        gap = float(y.mean() - p.mean())
        rows.append(
            {
                "snapshot_date": snapshot,
                "customers": len(part),
                "predicted_rate": float(p.mean()),
                "realised_rate": float(y.mean()),
                "gap": gap,
                "ece": expected_calibration_error(y, p),
                "flagged": abs(gap) > tolerance,
            }
        )
    columns = [
        "snapshot_date",
        "customers",
        "predicted_rate",
        "realised_rate",
        "gap",
        "ece",
        "flagged",
    ]
    return pd.DataFrame(rows, columns=columns)
