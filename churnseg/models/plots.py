"""Figures logged with runs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI without a display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def k_selection_figure(scores: Sequence[dict[str, Any]], chosen: int) -> Figure:
    """Return silhouette, Calinski-Harabasz, Davies-Bouldin and smallest share against k."""
    ks = [r["k"] for r in scores]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), constrained_layout=True)
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
