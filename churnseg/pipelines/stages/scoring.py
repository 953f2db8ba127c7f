"""Scoring stage: the champions applied to the scoring table, batch by batch, into a file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient
from numpy.typing import NDArray

from churnseg.features.snapshots import (
    SNAPSHOT,
)
from churnseg.models import churn as churn_model
from churnseg.models import reasons
from churnseg.models.classification import (
    LifecycleRules,
    Override,
    RiskBandRule,
    RiskThresholds,
    TierThresholds,
    apply_overrides,
    assign_risk_bands,
    assign_tiers,
    lifecycle_stages,
    risk_thresholds,
    tier_thresholds,
    value_column,
)
from churnseg.models.feedback import corrections_as_overrides
from churnseg.models.registry import (
    champion_version,
    load_champion,
)
from churnseg.pipelines import progress
from churnseg.pipelines.config import Config
from churnseg.pipelines.sinks.schema import CUSTOMER_SCORES, conform_batch
from churnseg.pipelines.stages.churn_training import (
    EXPLAIN_ARTIFACT,
    at_risk_mask,
    population_recency_limit,
)
from churnseg.pipelines.stages.feature_tables import build_file
from churnseg.pipelines.stages.segmenting import segment_names

# The population-wide quantities of a full scoring run, logged with its MLflow run.
STATE_ARTIFACT = "scoring_state.json"
SNAPSHOT_KIND, INTRADAY_KIND = "snapshot", "intraday"


@dataclass(frozen=True)
class PopulationState:
    """What a full scoring run computed over all its customers, reused by intra-day updates.

    Tier cut values and risk band thresholds are quantiles of the whole population and the
    BTYD parameters a fit over it: re-scoring a few customers with their own values would give
    classes that depend on which customers were re-scored together.
    """

    tiers: TierThresholds
    risk: RiskThresholds
    btyd: dict[str, float]
    segmentation_version: int
    churn_version: int
    attribute_kinds: dict[str, str] = field(default_factory=dict)
    # Text attributes read as booleans; None in states logged before it was kept.
    boolean_text: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the state as JSON-ready values (exact floats, not rounded)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PopulationState:
        """Return the state ``as_dict`` gave."""
        return cls(
            tiers=TierThresholds(**values["tiers"]),
            risk=RiskThresholds(**values["risk"]),
            btyd={str(k): float(v) for k, v in values["btyd"].items()},
            segmentation_version=int(values["segmentation_version"]),
            churn_version=int(values["churn_version"]),
            attribute_kinds=dict(values.get("attribute_kinds", {})),
            boolean_text=(
                tuple(values["boolean_text"]) if values.get("boolean_text") is not None else None
            ),
        )


# A batch's calibrated and ranking P(churn), and the ranking model's binned rows when it is
# predicted from them (``churn.churn_scores_and_bins``): the reasons walk the trees on them.
BatchScores = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.uint8] | None]


@dataclass(frozen=True)
class ChampionModels:
    """The champion models and what scoring reads with them, loaded once."""

    segmenter: Any
    classifier: Any
    segmentation_version: int
    churn_version: int
    segment_names: dict[int, str]
    explainer: Any  # the uncalibrated ranking model: reasons and risk ranking
    reference: dict[str, Any]
    reason_features: tuple[str, ...]


@dataclass(frozen=True)
class ScoringContext:
    """Everything a scoring run applies to every batch: models, their versions, run facts.

    Quantities that need the whole population (tier cut values, risk band thresholds) are
    computed once before the batches, so ``score_batch`` stays a function of one batch and
    batch scoring gives the same classes as scoring everyone at once.
    """

    models: ChampionModels
    run_id: str
    scored_at: datetime
    horizon_days: int
    value_column: str | None
    max_recency_days: int | None
    tiers: TierThresholds
    risk: RiskThresholds
    risk_rank_by: str
    lifecycle: LifecycleRules
    overrides: tuple[Override, ...]
    reasons_top_k: int
    # (calibrated, ranking) P(churn) and bins of each batch of the ranking pass, by its first
    # row, when kept (``keep_scores``): scoring that batch takes them instead of predicting it
    # again, and its reasons walk the trees on the kept bins (one byte per model input).
    batch_scores: dict[int, BatchScores] = field(default_factory=dict, repr=False)
    # An intra-day update publishes into the snapshot it updates, not the moment of its features.
    snapshot_date: date | None = None
    update_kind: str = SNAPSHOT_KIND


def expected_value(frame: pd.DataFrame, horizon_days: int) -> NDArray[np.float64]:
    """Return each customer's expected revenue over the horizon (NaN where none can be said).

    Purchases: BG/NBD expected purchases x Gamma-Gamma expected spend
    (``btyd_expected_value``); where those models could not describe a buyer (too little
    history to fit), the last year's spend pro rata. Subscriptions: the recurring revenue of
    the active ones (per month) over the horizon, added. A table with neither (a customers-only
    snapshot) has no value: NaN, published as null.
    """
    value = np.zeros(len(frame), dtype=np.float64)
    known = False
    pro_rata = horizon_days / 365.0
    if "spend_365d" in frame:
        spend = frame["spend_365d"].astype("float64").fillna(0.0).to_numpy() * pro_rata
        if "btyd_expected_value" in frame:
            btyd = frame["btyd_expected_value"].astype("float64").to_numpy()
            bought = frame["frequency"].to_numpy() > 0 if "frequency" in frame else True
            spend = np.where(np.isnan(btyd), np.where(bought, spend, 0.0), btyd)
        value += spend
        known = True
    if "sub_recurring_revenue" in frame:
        monthly = frame["sub_recurring_revenue"].astype("float64").fillna(0.0).to_numpy()
        value += monthly * horizon_days / 30.0
        known = True
    if not known:
        return np.full(len(frame), np.nan, dtype=np.float64)
    return np.asarray(np.clip(value, 0.0, None), dtype=np.float64)


def _risk_ranking(
    frame: pd.DataFrame, proba: NDArray[np.float64], value: NDArray[np.float64], by: str
) -> pd.Series:
    """Return what the retention list is ordered by: value at risk, or churn probability.

    Ranking by the published probability itself keeps the bands monotone in it: a higher
    probability is never in a lower band. Calibrated probabilities are strictly increasing in
    the ranking model's score (``models.calibration``), so there are no tied blocks and "top
    10%" is 10% of customers.
    """
    if by == "value_at_risk":
        return pd.Series(proba * value, index=frame.index)
    return pd.Series(proba, index=frame.index)


def _explanations(name: str, version: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Return the reference values and reason features logged with a churn model's run."""
    run_id = MlflowClient().get_model_version(name, str(version)).run_id
    try:
        explain = mlflow.artifacts.load_dict(f"runs:/{run_id}/{EXPLAIN_ARTIFACT}")
    except Exception:  # a model trained before reasons existed: score it without reasons
        return {}, ()
    return dict(explain["reference"]), tuple(explain["features"])


def _risk_rule(config: Config) -> tuple[RiskBandRule, str]:
    """Return the risk band rule and what the retention list ranks by."""
    bands = config.churn.risk_bands
    rule = RiskBandRule(
        mode=bands.mode,
        high_share=bands.high_share,
        medium_share=bands.medium_share,
        contact_cost=bands.contact_cost,
        save_rate=bands.save_rate,
    )
    return rule, "value_at_risk" if bands.mode == "cost" else bands.rank_by


def load_champions(config: Config) -> ChampionModels:
    """Load both champion models, the segment names and the reasons' reference values."""
    seg_name, churn_name = config.mlflow.segmentation_model, config.mlflow.churn_model
    seg_version, churn_version = champion_version(seg_name), champion_version(churn_name)
    classifier = load_champion(churn_name)
    explainer = churn_model.ranking_model(classifier)
    reference, reason_features = _explanations(churn_name, churn_version)
    # A promoted baseline reads a few columns: explain only the ones the model uses.
    inputs = set(getattr(explainer, "feature_names_in_", reason_features))
    return ChampionModels(
        segmenter=load_champion(seg_name),
        classifier=classifier,
        segmentation_version=seg_version,
        churn_version=churn_version,
        segment_names=segment_names(seg_name, seg_version),
        explainer=explainer,
        reference=reference,
        reason_features=tuple(f for f in reason_features if f in inputs and f in reference),
    )


def scoring_context(
    config: Config,
    run_id: str,
    features_path: Path,
    keep_scores: bool = False,
    state: PopulationState | None = None,
    models: ChampionModels | None = None,
    corrections: tuple[Override, ...] = (),
) -> ScoringContext:
    """Load the champion models and compute population-wide thresholds for a scoring run.

    One pass over ``features_path`` collects the tier value and the risk ranking of every
    customer (two floats each), so memory stays bounded at any population size. The thresholds
    and the BTYD parameters the features were built with are logged to the active run as
    ``scoring_state.json``, the state an intra-day update of this snapshot reuses.

    Args:
        config: The run's config.
        run_id: The MLflow run the scores belong to.
        features_path: The scoring feature table.
        keep_scores: Also keep each batch's churn probabilities (two more floats per customer)
            and the ranking model's bins (a byte per model input: 116 bytes a customer for the
            sample's champion) in ``batch_scores``, so a scoring pass over the same batches
            predicts nothing twice and prepares no row again.
        state: A full snapshot's thresholds: use them, compute none (an intra-day update).
        models: The champions, loaded before (the API keeps them); default: load them here.
        corrections: People's corrections of classes (``feedback.corrections_as_overrides``),
            applied after the configured overrides.
    """
    models = models if models is not None else load_champions(config)
    cls = config.classification
    rule, rank_by = _risk_rule(config)
    horizon = config.snapshots.horizon_days
    batch_scores: dict[int, BatchScores] = {}
    features = pq.ParquetFile(features_path)
    value_col = value_column(cls.value_column, features.schema_arrow.names)
    max_recency = population_recency_limit(config)
    if state is None:
        tiers, risk = _population_thresholds(
            config,
            models,
            features,
            value_col,
            max_recency,
            rule,
            rank_by,
            batch_scores if keep_scores else None,
        )
        built_path = build_file(features_path)
        built = json.loads(built_path.read_text()) if built_path.exists() else {}
        state = PopulationState(
            tiers,
            risk,
            built.get("btyd", {}),
            models.segmentation_version,
            models.churn_version,
            built.get("attribute_kinds", {}),
            tuple(built["boolean_text"]) if "boolean_text" in built else None,
        )
        if mlflow.active_run() is not None:
            mlflow.log_dict(state.as_dict(), STATE_ARTIFACT)
            mlflow.log_params(
                {
                    "tier_a_min_value": round(tiers.a_min, 4),
                    "tier_b_min_value": round(tiers.b_min, 4),
                    "risk_high_min": round(risk.high_min, 6),
                    "risk_medium_min": round(risk.medium_min, 6),
                }
            )
    return ScoringContext(
        models=models,
        run_id=run_id,
        scored_at=datetime.now(UTC).replace(microsecond=0),
        horizon_days=horizon,
        value_column=value_col,
        max_recency_days=max_recency,
        tiers=state.tiers,
        risk=state.risk,
        risk_rank_by=rank_by,
        lifecycle=LifecycleRules(
            new_within_days=cls.new_within_days,
            churned_after_days=cls.churned_after_days,
            trend_window_days=cls.trend_window_days,
            growing_ratio=cls.growing_ratio,
            declining_ratio=cls.declining_ratio,
        ),
        overrides=(
            *(
                Override(o.column, o.op, o.value, {str(k): v for k, v in o.set.items()})
                for o in cls.overrides
            ),
            *corrections,
        ),
        reasons_top_k=config.churn.reasons_top_k,
        batch_scores=batch_scores,
    )


def _population_thresholds(
    config: Config,
    models: ChampionModels,
    features: pq.ParquetFile,
    value_col: str | None,
    max_recency: int | None,
    rule: RiskBandRule,
    rank_by: str,
    batch_scores: dict[int, BatchScores] | None,
) -> tuple[TierThresholds, RiskThresholds]:
    """Return tier cut values and risk band thresholds over every customer of ``features``.

    ``batch_scores``, when given, keeps each batch's probabilities and bins by its first row.
    """
    classifier, horizon = models.classifier, config.snapshots.horizon_days
    values, rankings = [], []
    chunk = config.publish.chunk_rows
    batches = features.iter_batches(batch_size=chunk)
    n_batches = -(-features.metadata.num_rows // chunk)
    first_row = 0
    for batch in progress.track(batches, "ranking customers (batches)", total=n_batches):
        frame = batch.to_pandas()
        # Both probabilities cost one prediction (``churn_scores``), as much as either alone.
        proba, score, bins = churn_model.churn_scores_and_bins(classifier, frame)
        if batch_scores is not None:  # the bins only serve the reasons
            batch_scores[first_row] = (proba, score, bins if models.reason_features else None)
        first_row += len(frame)
        if value_col is not None:
            values.append(frame[value_col].astype("float64").fillna(0.0).to_numpy())
        value = np.nan_to_num(expected_value(frame, horizon))
        ranking = _risk_ranking(frame, proba, value, rank_by)
        # Bands rank the customers who can still churn; the others take no slot.
        rankings.append(ranking.to_numpy()[at_risk_mask(frame, max_recency)])
    all_values = pd.Series(np.concatenate(values) if values else np.array([], dtype=float))
    all_ranks = pd.Series(np.concatenate(rankings) if rankings else np.array([], dtype=float))
    return tier_thresholds(all_values, config.classification.tier_cuts), risk_thresholds(
        all_ranks, rule
    )


def score_batch(
    frame: pd.DataFrame, context: ScoringContext, first_row: int | None = None
) -> pd.DataFrame:
    """Return the ``customer_scores`` rows of one batch of scoring features.

    Every output column is built here (docs/output_tables.md): segment, value tier, lifecycle
    stage and risk band (business overrides applied last), churn probability, top reasons,
    expected value and value at risk.

    Args:
        frame: One batch of the scoring feature table.
        context: The run's models and population-wide thresholds.
        first_row: The batch's first row in the table: its probabilities are taken from
            ``context.batch_scores`` when the ranking pass kept them (and they fit the batch).
    """
    segments = context.models.segmenter.predict(frame)
    # The uncalibrated score is the risk ranking and the attributions' baseline; predicting is
    # most of a scoring run's cost, so both probabilities come from one prediction, made once.
    known = context.batch_scores.pop(first_row, None) if first_row is not None else None
    if known is not None and len(known[0]) == len(frame):
        proba, score, bins = known
    else:
        proba, score, bins = churn_model.churn_scores_and_bins(context.models.classifier, frame)
    value = expected_value(frame, context.horizon_days)
    at_risk = at_risk_mask(frame, context.max_recency_days)
    names = context.models.segment_names
    if context.value_column is not None:
        tier_values = frame[context.value_column].astype("float64").fillna(0.0)
        tiers = assign_tiers(tier_values, context.tiers).to_numpy().astype(object)
    else:  # nothing to cut tiers on (a snapshot without money): null, not a made-up tier
        tiers = np.full(len(frame), None, dtype=object)
    classes = pd.DataFrame(
        {
            "segment_name": [names.get(int(s), f"Segment {s}") for s in segments],
            "value_tier": tiers,
            "lifecycle_stage": lifecycle_stages(frame, context.lifecycle, at_risk).to_numpy(),
        },
        index=frame.index,
    )
    classes, _ = apply_overrides(classes, frame, context.overrides)
    ranking = _risk_ranking(frame, proba, np.nan_to_num(value), context.risk_rank_by)
    why = np.full(len(frame), None, dtype=object)
    if context.models.reason_features:
        contributions = reasons.attributions(
            context.models.explainer,
            frame,
            context.models.reason_features,
            context.models.reference,
            base=score,
            bins=bins,
        )
        why = reasons.top_reasons(
            contributions, frame, context.models.reference, context.reasons_top_k
        ).to_numpy()
    if not at_risk.all():
        why = np.where(at_risk, why, reasons.churned_reasons(frame).to_numpy())
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].to_numpy(),
            "snapshot_date": (
                frame[SNAPSHOT].to_numpy()
                if context.snapshot_date is None
                else np.full(len(frame), context.snapshot_date, dtype=object)
            ),
            "segment_id": segments.astype("int64"),
            "segment_name": classes["segment_name"].to_numpy(),
            "value_tier": classes["value_tier"].to_numpy(),
            "lifecycle_stage": classes["lifecycle_stage"].to_numpy(),
            "churn_probability": proba.astype("float64"),
            "risk_band": assign_risk_bands(ranking, context.risk, at_risk).to_numpy(),
            "top_reasons": why,
            "expected_value": value,
            "value_at_risk": value * proba,
            "segmentation_model_version": context.models.segmentation_version,
            "churn_model_version": context.models.churn_version,
            "run_id": context.run_id,
            # ISO text, typed on write: pyarrow warns converting tz-aware pandas columns.
            "scored_at": context.scored_at.isoformat(),
            "features_as_of": _as_of_text(frame[SNAPSHOT]),
            "update_kind": context.update_kind,
        }
    )


def _as_of_text(snapshots: pd.Series) -> NDArray[np.object_]:
    """Return each row's feature cutoff as ISO text in UTC (one conversion per distinct value)."""
    moments = pd.to_datetime(snapshots)
    text = {m: m.strftime("%Y-%m-%dT%H:%M:%S+00:00") for m in moments.unique()}
    return moments.map(text).to_numpy(dtype=object)


def score_batches_to_file(
    batches: Iterable[pa.RecordBatch],
    context: ScoringContext,
    path: Path,
    source: str,
    first_row: int = 0,
    total_rows: int | None = None,
) -> tuple[int, float]:
    """Score feature batches into a Parquet file of conformed ``customer_scores`` rows.

    Progress is reported in rows (of ``total_rows`` when given) to the installed reporter.

    Returns:
        Rows scored and the sum of their churn probabilities.
    """
    rows, proba_sum = 0, 0.0
    with (
        pq.ParquetWriter(path, CUSTOMER_SCORES.arrow_schema()) as writer,
        progress.stage("scoring customers", total_rows) as step,
    ):
        for batch in batches:
            scores = score_batch(batch.to_pandas(), context, first_row)
            arrow = pa.RecordBatch.from_pandas(scores, preserve_index=False)
            writer.write_batch(conform_batch(arrow, CUSTOMER_SCORES, source, first_row))
            first_row += batch.num_rows
            rows += len(scores)
            proba_sum += float(scores["churn_probability"].sum())
            step.advance(batch.num_rows)
    return rows, proba_sum


def score_stage(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table with the champion models in batches; write the scores file.

    Reads ``publish.chunk_rows`` rows at a time and appends each scored batch to the output, so
    memory stays bounded whatever the number of customers. The file appears complete or not
    at all (written beside, then renamed).

    Returns:
        Rows scored.
    """
    context = scoring_context(
        config, run_id, features_path, keep_scores=True, corrections=published_corrections(config)
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    features = pq.ParquetFile(features_path)
    batches = features.iter_batches(batch_size=config.publish.chunk_rows)
    rows, proba_sum = score_batches_to_file(
        batches, context, partial, features_path.name, total_rows=features.metadata.num_rows
    )
    partial.replace(out_path)
    log_scoring_metrics(rows, proba_sum)
    return rows


def published_corrections(config: Config) -> tuple[Override, ...]:
    """Return the corrections people recorded in the output database, as override rules.

    Logs how many (customer, class) pairs they correct to the active run.
    """
    from churnseg.pipelines.publish import read_feedback, target_from_config

    rules = corrections_as_overrides(read_feedback(target_from_config(config)))
    if mlflow.active_run() is not None:
        corrected = {(field, i) for r in rules for field in r.set for i in r.value}
        mlflow.log_metrics({"corrections_applied": float(len(corrected))})
    return rules


def log_scoring_metrics(rows: int, proba_sum: float, **extra: float) -> None:
    """Log rows scored and their mean churn probability (plus ``extra``) to the active run."""
    metrics = {"rows_scored": float(rows), **extra}
    if rows:
        metrics["mean_churn_probability"] = proba_sum / rows
    mlflow.log_metrics(metrics)
