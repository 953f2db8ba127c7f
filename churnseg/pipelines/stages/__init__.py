"""Pipeline stages as plain functions: read references, call the library, write references.

Prefect tasks wrap these one to one; notebooks and tests call them directly. Stages pass paths
and small summaries, never large frames. One module per stage; this package names them all.
"""

from churnseg.pipelines.frames import read_feature_table
from churnseg.pipelines.stages.churn_training import (
    EXPLAIN_ARTIFACT,
    ChurnOutcome,
    at_risk_mask,
    at_risk_population,
    churn_stage,
    population_recency_limit,
    read_at_risk_population,
)
from churnseg.pipelines.stages.extract_clean import (
    DataQualityError,
    clean_stage,
    extract_stage,
    resolve_plan,
)
from churnseg.pipelines.stages.feature_tables import (
    FEATURE_TABLES,
    LEVELS_PARAM,
    champion_levels,
    feature_stage,
)
from churnseg.pipelines.stages.run_folder import (
    CLEAN_ORDER,
    RunPaths,
    ensure_sample,
    new_run_key,
    run_paths,
)
from churnseg.pipelines.stages.scoring import (
    ScoringContext,
    expected_value,
    log_scoring_metrics,
    score_batch,
    score_batches_to_file,
    score_stage,
    scoring_context,
)
from churnseg.pipelines.stages.segmenting import (
    PROFILE_COLUMNS,
    SEGMENT_NAMES_TAG,
    SEGMENTATION_FILE,
    SegmentationOutcome,
    register_segmentation,
    segment_names,
    segmentation_inputs,
    segmentation_pipeline_from_config,
    segmentation_stage,
    trained_segmentation,
)
from churnseg.pipelines.stages.tracking import (
    configure_mlflow,
    data_lineage_stage,
    log_lineage,
    summary_line,
)

__all__ = [
    "CLEAN_ORDER",
    "EXPLAIN_ARTIFACT",
    "FEATURE_TABLES",
    "LEVELS_PARAM",
    "PROFILE_COLUMNS",
    "SEGMENTATION_FILE",
    "SEGMENT_NAMES_TAG",
    "ChurnOutcome",
    "DataQualityError",
    "RunPaths",
    "ScoringContext",
    "SegmentationOutcome",
    "at_risk_mask",
    "at_risk_population",
    "champion_levels",
    "churn_stage",
    "clean_stage",
    "configure_mlflow",
    "data_lineage_stage",
    "ensure_sample",
    "expected_value",
    "extract_stage",
    "feature_stage",
    "log_lineage",
    "log_scoring_metrics",
    "new_run_key",
    "population_recency_limit",
    "read_at_risk_population",
    "read_feature_table",
    "register_segmentation",
    "resolve_plan",
    "run_paths",
    "score_batch",
    "score_batches_to_file",
    "score_stage",
    "scoring_context",
    "segment_names",
    "segmentation_inputs",
    "segmentation_pipeline_from_config",
    "segmentation_stage",
    "summary_line",
    "trained_segmentation",
]
