"""Figures logged with runs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display

from matplotlib.figure import Figure


def k_selection_figure(scores: Sequence[dict[str, Any]], chosen: int) -> Figure:
    """Return silhouette, Calinski-Harabasz, Davies-Bouldin and smallest share against k."""
    ks = [r["k"] for r in scores]
    fig = Figure(figsize=(14, 3.2), layout="constrained")
    axes = fig.subplots(1, 4)
    panels = [
        ("silhouette", "silhouette (higher is better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher)"),
        ("davies_bouldin", "Davies-Bouldin (lower)"),
        ("min_share", "smallest segment share"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(ks, [r[key] for r in scores], marker="o")
        ax.axvline(chosen, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("k")
    fig.suptitle(f"k selection: chose k={chosen}", fontsize=10)
    return fig


def reliability_figure(table: Any) -> Figure:
    """Return a reliability diagram: observed churn rate against mean predicted probability."""
    fig = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.plot(table["predicted"], table["observed"], marker="o", label="model")
    ax.set_xlabel("mean predicted churn probability")
    ax.set_ylabel("observed churn rate")
    ax.set_title("calibration on the validation cutoff", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def importance_figure(importances: Any, top: int = 15) -> Figure:
    """Return a bar chart of permutation importance (drop in ROC AUC), most important on top."""
    head = importances.head(top).iloc[::-1]
    fig = Figure(figsize=(6, 0.3 * len(head) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(head["feature"], head["importance"])
    ax.set_xlabel("drop in ROC AUC when shuffled")
    ax.set_title("permutation importance (validation cutoff)", fontsize=10)
    return fig
