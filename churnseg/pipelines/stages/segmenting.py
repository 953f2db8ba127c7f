"""Segmentation stage: k selection, k-means with stable ids, names, profiles, registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from mlflow import MlflowClient
from sklearn.pipeline import Pipeline

from churnseg.features.snapshots import (
    SNAPSHOT,
)
from churnseg.models import segmentation as seg_model
from churnseg.models.plots import k_selection_figure
from churnseg.models.registry import (
    find_champion,
    load_version,
    log_and_register,
    promote,
    version_tags,
)
from churnseg.pipelines import progress
from churnseg.pipelines.config import Config
from churnseg.pipelines.stages.feature_tables import read_feature_table
from churnseg.pipelines.stages.run_folder import RunPaths

SEGMENT_NAMES_TAG = "segment_names"


@dataclass(frozen=True)
class SegmentationOutcome:
    """What the segmentation stage registered, and how ids relate to the previous champion."""

    version: int
    k: int
    names: dict[int, str]
    kept: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)


# Plain-unit columns shown in segment profiles beside the clustering inputs.
PROFILE_COLUMNS = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days")


def segment_names(model_name: str, version: int) -> dict[int, str]:
    """Return the segment names stored on a registered segmentation model version."""
    tags = version_tags(model_name, version)
    return {int(k): v for k, v in json.loads(tags.get(SEGMENT_NAMES_TAG, "{}")).items()}


def segmentation_pipeline_from_config(config: Config) -> Pipeline:
    """Return the unfitted segmentation pipeline that ``config.segmentation`` describes."""
    s = config.segmentation
    return seg_model.segmentation_pipeline(
        features=s.features,
        scaler=s.scaler,
        pca_components=s.pca_components,
        k_min=s.k_min,
        k_max=s.k_max,
        min_segment_share=s.min_segment_share,
        silhouette_sample=s.silhouette_sample,
        n_init=s.n_init,
        minibatch_above=s.minibatch_above,
        random_state=s.random_state,
    )


def segmentation_stage(config: Config, paths: RunPaths, run_id: str = "") -> SegmentationOutcome:
    """Fit segmentation on the latest snapshot, keep ids stable, name, profile and register.

    Segment ids and names follow the champion's where a new segment matches one of its segments
    (Hungarian matching on centroids in the champion's space); the model becomes champion.
    Writes ``segment_profiles.parquet`` (for publishing) and ``segment_migration.parquet``.
    """
    s = config.segmentation
    model_name = config.mlflow.segmentation_model
    frame = read_feature_table(paths.features / "scoring.parquet")
    candidates = max(min(s.k_max, len(frame) - 1) - s.k_min + 1, 0)
    with progress.stage("segmentation: trying k", candidates) as step:
        pipeline = segmentation_pipeline_from_config(config).fit(
            frame, kmeans__on_k=lambda _k: step.advance()
        )
    km = pipeline[-1]
    match, keep = None, {}
    previous = find_champion(model_name)
    if previous is not None:
        champion = load_version(model_name, previous)
        match = seg_model.match_segments(pipeline, champion, frame, s.match_max_distance)
        km.relabel(match.ids)
        old_names = segment_names(model_name, previous)
        keep = {sid: old_names[sid] for sid in match.kept if sid in old_names}
    segments = pipeline.predict(frame)
    columns = list(dict.fromkeys([*s.features, *PROFILE_COLUMNS]))
    profiles = seg_model.segment_profiles(frame, segments, columns)
    rules = [seg_model.NamingRule(r.name, r.min_rank, r.max_rank) for r in s.naming]
    names = seg_model.name_segments(profiles, s.features, rules, keep=keep)
    profiles.insert(1, "segment_name", profiles.segment_id.map(names))

    validation = read_feature_table(paths.features / "validation.parquet")
    # Narrow frames: adding a column to a whole feature table copies it (and warns, since
    # read_feature_table gives one block per column).
    before = validation[["customer_id", "churned"]].assign(segment_id=pipeline.predict(validation))
    churn_rate = before.groupby("segment_id")["churned"].mean()
    profiles["churn_rate"] = profiles.segment_id.map(churn_rate)
    after = frame[["customer_id"]].assign(segment_id=segments)
    migration = seg_model.migration_table(before, after, names)

    k_scores = pd.DataFrame(km.scores_)
    mlflow.log_params({"segmentation_k": km.k_, "segmentation_features": ",".join(s.features)})
    mlflow.log_metric("segmentation_silhouette", float(k_scores.set_index("k").silhouette[km.k_]))
    mlflow.log_table(k_scores, "segmentation/k_scores.json")
    mlflow.log_figure(k_selection_figure(km.scores_, km.k_), "segmentation/k_selection.png")
    mlflow.log_table(profiles, "segmentation/profiles.json")
    mlflow.log_table(migration, "segmentation/migration.json")
    if match is not None:
        mlflow.log_dict(
            {"kept": match.kept, "new": match.new, "vanished": match.vanished},
            "segmentation/identity.json",
        )
    version = log_and_register(
        pipeline, model_name, frame.head(100), seg_model.SKOPS_TYPES, segments[:100]
    )
    MlflowClient().set_model_version_tag(
        model_name, str(version), SEGMENT_NAMES_TAG, json.dumps(names)
    )
    promote(model_name, version, "segmentation follows every retrain; ids and names are matched")

    snapshot = str(frame[SNAPSHOT].iloc[0]) if len(frame) else ""
    profile_json = profiles[columns].apply(lambda r: json.dumps(r.to_dict()), axis=1)
    pd.DataFrame(
        {
            "snapshot_date": snapshot,
            "segment_id": profiles.segment_id.astype("int64"),
            "segment_name": profiles.segment_name,
            "size": profiles["size"].astype("int64"),
            "share": profiles["share"],
            "revenue_share": profiles["revenue_share"],
            "churn_rate": profiles["churn_rate"],
            "profile": profile_json,
            "segmentation_model_version": version,
            "run_id": run_id,
        }
    ).to_parquet(paths.root / "segment_profiles.parquet", index=False)
    migration.to_parquet(paths.root / "segment_migration.parquet", index=False)
    return SegmentationOutcome(
        version=version,
        k=int(km.k_),
        names=names,
        kept=sorted(match.kept) if match else [],
        new=match.new if match else [],
        vanished=match.vanished if match else [],
    )
