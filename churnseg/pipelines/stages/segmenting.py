"""Segmentation stage: k selection, k-means with stable ids, names, profiles, registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
from sklearn.pipeline import Pipeline

from churnseg.features.labels import LABEL
from churnseg.features.snapshots import (
    SNAPSHOT,
)
from churnseg.features.tables import CUSTOMER
from churnseg.models import segmentation as seg_model
from churnseg.models.plots import k_selection_figure
from churnseg.models.registry import (
    find_champion,
    load_version,
    log_model,
    promote,
    register,
    version_tags,
)
from churnseg.pipelines import progress
from churnseg.pipelines.config import Config
from churnseg.pipelines.frames import read_feature_table
from churnseg.pipelines.stages.run_folder import RunPaths

SEGMENT_NAMES_TAG = "segment_names"
# The logged (not yet registered) segmentation model of a run folder and its segment names.
SEGMENTATION_FILE = "segmentation.json"


@dataclass(frozen=True)
class SegmentationOutcome:
    """What the segmentation stage registered, and how ids relate to the previous champion."""

    version: int | None  # None until registered (``register_segmentation``)
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


def segmentation_inputs(config: Config, frame: pd.DataFrame) -> list[str]:
    """Return the clustering inputs: ``segmentation.features``, or the default for ``frame``."""
    features = config.segmentation.features
    if features == "auto":
        return seg_model.default_inputs(frame, config.classification.trend_window_days)
    return list(features)


def segmentation_frame(
    config: Config, path: Path, champion: Pipeline | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Return the feature table at ``path`` as segmentation needs it, and the clustering inputs.

    Only the columns the stage uses are read (at five million customers the whole scoring table
    is about 4 GB): the ids and cutoff, the clustering inputs (a derived one's source columns),
    the ``champion``'s inputs (to match segments in its space) and the profile columns. A
    customers-only table, whose inputs are chosen from the attributes' values
    (``segmentation_inputs``), is read whole, as is any table when the champion does not say
    what it reads.
    """
    names = pq.read_schema(path).names
    features = config.segmentation.features
    if features == "auto":
        inputs = seg_model.behaviour_inputs(names, config.classification.trend_window_days)
    else:
        inputs = list(features)
    matched = [] if champion is None else seg_model.pipeline_inputs(champion)
    if not inputs or matched is None:
        frame = read_feature_table(path)
        return frame, segmentation_inputs(config, frame)
    wanted = [
        CUSTOMER,
        SNAPSHOT,
        *seg_model.input_columns(inputs),
        *seg_model.input_columns(matched),
        *PROFILE_COLUMNS,  # monetary_total among them: the value of the revenue share
    ]
    # A configured input the table lacks still fails where it did: when the pipeline fits.
    columns = [c for c in dict.fromkeys(wanted) if c in names]
    return read_feature_table(path, columns=columns), inputs


def segmentation_pipeline_from_config(config: Config, features: list[str]) -> Pipeline:
    """Return the unfitted segmentation pipeline of ``config.segmentation`` over ``features``.

    ``features`` are the clustering inputs (``segmentation_inputs``).
    """
    s = config.segmentation
    return seg_model.segmentation_pipeline(
        features=features,
        scaler=s.scaler,
        pca_components=s.pca_components,
        k_min=s.k_min,
        k_max=s.k_max,
        min_segment_share=s.min_segment_share,
        silhouette_sample=s.silhouette_sample,
        n_init=s.n_init,
        fit_sample_rows=s.fit_sample_rows,
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
    previous = find_champion(model_name)
    champion = load_version(model_name, previous) if previous is not None else None
    frame, inputs = segmentation_frame(config, paths.features / "scoring.parquet", champion)
    candidates = max(min(s.k_max, len(frame) - 1) - s.k_min + 1, 0)
    with progress.stage("segmentation: trying k", candidates) as step:
        pipeline = segmentation_pipeline_from_config(config, inputs).fit(
            frame, kmeans__on_k=lambda _k: step.advance()
        )
    km = pipeline[-1]
    match, keep = None, {}
    if previous is not None and champion is not None:
        match = seg_model.match_segments(pipeline, champion, frame, s.match_max_distance)
        km.relabel(match.ids)
        old_names = segment_names(model_name, previous)
        keep = {sid: old_names[sid] for sid in match.kept if sid in old_names}
    segments = pipeline.predict(frame)
    columns = list(dict.fromkeys([*inputs, *(c for c in PROFILE_COLUMNS if c in frame)]))
    profiles = seg_model.segment_profiles(frame, segments, columns)
    rules = [seg_model.NamingRule(r.name, r.min_rank, r.max_rank) for r in s.naming]
    names = seg_model.name_segments(profiles, inputs, rules, keep=keep)
    profiles.insert(1, "segment_name", profiles.segment_id.map(names))

    validation_file = paths.features / "validation.parquet"
    wanted = [CUSTOMER, LABEL, *seg_model.input_columns(inputs)]
    validation = read_feature_table(
        validation_file, columns=[c for c in wanted if c in pq.read_schema(validation_file).names]
    )
    # Narrow frames: adding a column to a feature table copies it (and warns, since
    # read_feature_table gives one block per column).
    before = validation[[CUSTOMER, LABEL]].assign(segment_id=pipeline.predict(validation))
    churn_rate = before.groupby("segment_id")[LABEL].mean()
    profiles["churn_rate"] = profiles.segment_id.map(churn_rate)
    after = frame[[CUSTOMER]].assign(segment_id=segments)
    migration = seg_model.migration_table(before, after, names)

    k_scores = pd.DataFrame(km.scores_)
    mlflow.log_params({"segmentation_k": km.k_, "segmentation_features": ",".join(inputs)})
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
    # Logged, not registered: the churn stage registers both models once it has succeeded, so
    # a retrain that fails on the way registers nothing.
    model_uri = log_model(
        pipeline, model_name, frame.head(100), seg_model.SKOPS_TYPES, segments[:100]
    )
    (paths.root / SEGMENTATION_FILE).write_text(
        json.dumps({"model_uri": model_uri, "names": names}, indent=2)
    )

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
            # Filled in when the model is registered (``register_segmentation``).
            "segmentation_model_version": pd.array([pd.NA] * len(profiles), dtype="Int64"),
            "run_id": run_id,
        }
    ).to_parquet(paths.root / "segment_profiles.parquet", index=False)
    migration.to_parquet(paths.root / "segment_migration.parquet", index=False)
    return SegmentationOutcome(
        version=None,
        k=int(km.k_),
        names=names,
        kept=sorted(match.kept) if match else [],
        new=match.new if match else [],
        vanished=match.vanished if match else [],
    )


def trained_segmentation(paths: RunPaths) -> tuple[str, dict[int, str]] | None:
    """Return the model URI and segment names the run's segmentation stage logged, if any."""
    path = paths.root / SEGMENTATION_FILE
    if not path.exists():
        return None
    logged = json.loads(path.read_text())
    return str(logged["model_uri"]), {int(k): v for k, v in logged["names"].items()}


def register_segmentation(config: Config, paths: RunPaths) -> int:
    """Register the run's logged segmentation model with its names and make it champion.

    Segmentation follows every retrain (ids and names are matched to the previous champion),
    so it is promoted without a gate; the published profiles get the version.

    Raises:
        FileNotFoundError: The segmentation stage has not run in this folder.
    """
    trained = trained_segmentation(paths)
    if trained is None:
        raise FileNotFoundError(f"{paths.root / SEGMENTATION_FILE}: run the segmentation stage")
    model_uri, names = trained
    name = config.mlflow.segmentation_model
    version = register(model_uri, name, {SEGMENT_NAMES_TAG: json.dumps(names)})
    promote(name, version, "segmentation follows every retrain; ids and names are matched")
    profiles_file = paths.root / "segment_profiles.parquet"
    if profiles_file.exists():
        profiles = pd.read_parquet(profiles_file)
        profiles["segmentation_model_version"] = version
        profiles.to_parquet(profiles_file, index=False)
    return version
