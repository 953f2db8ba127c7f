"""Stateless numeric transforms used inside logged scikit-learn pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

# Fully qualified names MLflow's skops loader must trust to load our pipelines.
# numpy.dtype: SimpleImputer keeps the dtype it was fitted on.
SKOPS_TRUSTED_TYPES = [
    "churnseg.models.transforms.signed_log1p",
    "churnseg.models.transforms.as_float",
    "churnseg.models.transforms.season_of_cutoff",
    "numpy.dtype",
]


def signed_log1p(x: ArrayLike) -> NDArray[np.float64]:
    """Return ``sign(x) * log(1 + |x|)``: compresses long tails, keeps sign and zero."""
    values = np.asarray(x, dtype=np.float64)
    return np.sign(values) * np.log1p(np.abs(values))


def as_float(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` as float64 (booleans and nullable integers included)."""
    return frame.astype("float64")


def season_of_cutoff(frame: pd.DataFrame) -> NDArray[np.float64]:
    """Return sine and cosine of each row's cutoff day of year (columns: sin, cos).

    Churn defined by inactivity is seasonal (a window over the holidays sees more purchases);
    stacked cutoffs at different times of year let a model learn that offset, which keeps its
    probabilities calibrated when validation or scoring falls in another season than the last
    training cutoff.
    """
    day = pd.to_datetime(frame.iloc[:, 0]).dt.day_of_year.to_numpy(dtype=np.float64)
    angle = 2.0 * np.pi * day / 365.25
    return np.column_stack([np.sin(angle), np.cos(angle)])
