"""k-means segmentation with k chosen from the data, inside one scikit-learn pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from churnseg.models.transforms import SKOPS_TRUSTED_TYPES, signed_log1p

SEGMENT_FEATURES = ("recency_days", "frequency", "monetary_mean", "tenure_days")
SKOPS_TYPES = [*SKOPS_TRUSTED_TYPES, "churnseg.models.segmentation.AutoKMeans"]


class AutoKMeans(ClusterMixin, BaseEstimator):
    """KMeans whose k is chosen by silhouette over a range, with a minimum segment share.

    Segment ids are ordered by the first feature's centroid, ascending (recency first means
    segment 0 is the most recently active), so ids do not depend on k-means' random label order.

    Attributes:
        k_: The chosen number of segments.
        scores_: One record per candidate k: silhouette, smallest segment share, eligibility
            (plain dicts, not a DataFrame, so the fitted model serialises with skops).
        kmeans_: The fitted KMeans with centroids in id order.
        cluster_centers_: Centroids in the (scaled) input space, row i = segment i.
    """

    def __init__(
        self,
        k_min: int = 2,
        k_max: int = 8,
        min_segment_share: float = 0.03,
        silhouette_sample: int = 5000,
        n_init: int = 4,
        random_state: int = 0,
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.min_segment_share = min_segment_share
        self.silhouette_sample = silhouette_sample
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: NDArray[np.float64], y: Any = None) -> AutoKMeans:
        """Fit KMeans for every k in range and keep the best eligible one."""
        X = np.asarray(X, dtype=np.float64)
        if self.k_min < 2 or self.k_max < self.k_min:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        k_hi = min(self.k_max, len(X) - 1)
        if k_hi < self.k_min:
            raise ValueError(f"{len(X)} rows are too few for k >= {self.k_min}")
        rng = np.random.default_rng(self.random_state)
        sample = (
            rng.choice(len(X), self.silhouette_sample, replace=False)
            if len(X) > self.silhouette_sample
            else np.arange(len(X))
        )
        rows, fits = [], {}
        for k in range(self.k_min, k_hi + 1):
            km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state)
            labels = km.fit_predict(X)
            share = np.bincount(labels, minlength=k).min() / len(X)
            sil = float(silhouette_score(X[sample], labels[sample]))
            rows.append(
                {
                    "k": k,
                    "silhouette": sil,
                    "min_share": share,
                    "eligible": bool(share >= self.min_segment_share),
                }
            )
            fits[k] = km
        scores = pd.DataFrame(rows)
        eligible = scores[scores.eligible]
        pool = eligible if len(eligible) else scores
        best = int(pool.sort_values(["silhouette", "k"], ascending=[False, True]).iloc[0]["k"])
        km = fits[best]
        order = np.argsort(km.cluster_centers_[:, 0], kind="stable")
        # Reordering the centroids makes predict() return ids in that order.
        km.cluster_centers_ = km.cluster_centers_[order]
        km.labels_ = np.argsort(order)[km.labels_]
        self.k_ = best
        self.scores_ = rows
        self.kmeans_ = km
        self.cluster_centers_ = km.cluster_centers_
        return self

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.int64]:
        """Return the segment id of each row."""
        return np.asarray(self.kmeans_.predict(np.asarray(X, dtype=np.float64)), dtype=np.int64)


def segmentation_pipeline(
    k_min: int = 2,
    k_max: int = 8,
    min_segment_share: float = 0.03,
    silhouette_sample: int = 5000,
    n_init: int = 4,
    random_state: int = 0,
) -> Pipeline:
    """Return an unfitted pipeline: signed log, standard scaling, then ``AutoKMeans``."""
    return Pipeline(
        [
            ("log", FunctionTransformer(signed_log1p)),
            ("scale", StandardScaler()),
            (
                "kmeans",
                AutoKMeans(
                    k_min=k_min,
                    k_max=k_max,
                    min_segment_share=min_segment_share,
                    silhouette_sample=silhouette_sample,
                    n_init=n_init,
                    random_state=random_state,
                ),
            ),
        ]
    )


def segment_profiles(
    features: pd.DataFrame, segments: NDArray[np.int64], columns: Sequence[str]
) -> pd.DataFrame:
    """Return per segment: size, share of customers, and mean of each column in plain units."""
    frame = features[list(columns)].assign(segment_id=segments)
    profile = frame.groupby("segment_id").mean()
    profile.insert(0, "size", frame.groupby("segment_id").size())
    profile.insert(1, "share", profile["size"] / len(frame))
    return profile.reset_index()


def name_segments(profiles: pd.DataFrame) -> dict[int, str]:
    """Return a readable name per segment id from its rank on recency and value.

    Foundation rules (transparent and deliberately simple): the most valuable recent segment is
    "Champions", long-inactive segments are "Hibernating", short-tenure ones "New", and the rest
    "Loyal"/"Occasional" by frequency. Names are made unique with a numeric suffix.
    """
    value = profiles["monetary_mean"] * profiles["frequency"]
    recency_median = profiles["recency_days"].median()
    frequency_median = profiles["frequency"].median()
    names: dict[int, str] = {}
    for row, row_value in zip(profiles.to_dict("records"), value, strict=True):
        if row["recency_days"] >= 180:
            name = "Hibernating"
        elif row["tenure_days"] < 120:
            name = "New"
        elif row["recency_days"] <= recency_median and row_value == value.max():
            name = "Champions"
        elif row["frequency"] >= frequency_median:
            name = "Loyal"
        else:
            name = "Occasional"
        names[int(row["segment_id"])] = name
    seen: dict[str, int] = {}
    for sid in sorted(names):
        base = names[sid]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            names[sid] = f"{base} {seen[base]}"
    return names
