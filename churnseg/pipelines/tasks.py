"""Prefect tasks: one stage function each, passing configs and paths, never frames."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from churnseg.features.snapshots import CutoffPlan
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config
from churnseg.pipelines.publish import publish_scores
from churnseg.pipelines.stages import RunPaths

# Caching keyed on config + input fingerprints arrives with resumable flows; until then every
# run recomputes, which is always correct.


@task(name="extract", cache_policy=NONE)
def extract(config: Config, paths: RunPaths) -> dict[str, int]:
    """Copy the sources into the run folder."""
    return stages.extract_stage(config, paths)


@task(name="clean", cache_policy=NONE)
def clean(config: Config, paths: RunPaths) -> dict[str, stages.TableQuality]:
    """Clean and quarantine every table."""
    return stages.clean_stage(config, paths)


@task(name="plan-cutoffs", cache_policy=NONE)
def plan(config: Config, paths: RunPaths) -> CutoffPlan:
    """Resolve the scoring, validation and training cutoffs."""
    return stages.resolve_plan(config, paths)


@task(name="build-features", cache_policy=NONE)
def features(config: Config, paths: RunPaths, cutoffs: CutoffPlan) -> dict[str, int]:
    """Build training, validation and scoring feature tables."""
    return stages.feature_stage(config, paths, cutoffs)


@task(name="train-segmentation", cache_policy=NONE)
def segmentation(config: Config, paths: RunPaths) -> stages.SegmentationOutcome:
    """Fit, register and promote the segmentation model."""
    return stages.segmentation_stage(config, paths)


@task(name="train-churn", cache_policy=NONE)
def churn(config: Config, paths: RunPaths) -> stages.ChurnOutcome:
    """Fit, validate, register and promote the churn model."""
    return stages.churn_stage(config, paths)


@task(name="score", cache_policy=NONE)
def score(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table with the champion models."""
    return stages.score_stage(config, features_path, out_path, run_id)


@task(name="publish", cache_policy=NONE)
def publish(config: Config, scores_path: Path) -> int:
    """Publish a scores file to the output table in one transaction."""
    return publish_scores(scores_path, config.publish_url, config.publish.table)
