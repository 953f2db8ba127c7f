"""Intra-day updates: re-score the customers whose data changed since the latest snapshot.

A full scoring run publishes a snapshot and logs its population-wide state (tier cut values,
risk band thresholds, the BTYD fit, the attribute kinds: ``PopulationState``). An update reads
only the changed customers' rows from the sources, builds their features as of now with that
state, scores them with the champion models and writes their rows into the same snapshot
(``update_kind`` 'intraday', ``features_as_of`` the moment). Because nothing in it depends on
which other customers are re-scored, a customer's update equals the row a full build of every
customer at the same moment, with the same state, gives it (``tests/test_intraday.py``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import cast

import mlflow
import pyarrow.parquet as pq

from churnseg.features.cleaning import AttributeKind
from churnseg.features.settings import FeatureConfig
from churnseg.features.snapshots import CutoffPlan
from churnseg.models.feedback import corrections_as_overrides
from churnseg.pipelines.config import Config
from churnseg.pipelines.keyed_files import KeyedSources
from churnseg.pipelines.publish import (
    PublishTarget,
    qualified,
    read_feedback,
    read_table,
)
from churnseg.pipelines.sources import (
    FeatureEngine,
    customers_changed_since,
    extract_sources,
    source_customer_ids,
)
from churnseg.pipelines.stages.extract_clean import SEEN_FILE, clean_stage
from churnseg.pipelines.stages.feature_tables import champion_levels, feature_stage
from churnseg.pipelines.stages.run_folder import CLEAN_ORDER, RunPaths
from churnseg.pipelines.stages.scoring import (
    INTRADAY_KIND,
    SNAPSHOT_KIND,
    STATE_ARTIFACT,
    ChampionModels,
    PopulationState,
    load_champions,
    score_batches_to_file,
    scoring_context,
)
from churnseg.pipelines.warm_engine import WarmDuckDB


class IntradayUnavailableError(RuntimeError):
    """No snapshot to update: nothing published, no state logged, or the champions changed."""


@dataclass(frozen=True)
class PublishedSnapshot:
    """The newest full snapshot: its date, the run that scored it, and that run's state."""

    snapshot_date: date
    run_id: str
    state: PopulationState

    @property
    def since(self) -> datetime:
        """Return the moment from which rows are newer than the snapshot's features."""
        return datetime.combine(self.snapshot_date, time())


def published_snapshot(target: PublishTarget) -> PublishedSnapshot:
    """Return the newest published full snapshot and the state its scoring run logged.

    Raises:
        IntradayUnavailableError: Nothing is published yet, or the snapshot's run logged no
            state (published by a churnseg before intra-day updates).
    """
    table = qualified(target, target.names.customer_scores)
    found = read_table(
        target,
        f"SELECT snapshot_date, run_id FROM {table} WHERE snapshot_date = "
        f"(SELECT MAX(snapshot_date) FROM {table}) AND "
        f"(update_kind IS NULL OR update_kind = ?) LIMIT 1",
        (SNAPSHOT_KIND,),
    )
    if found.empty:
        raise IntradayUnavailableError(
            f"no published snapshot at {target.describe(target.names.customer_scores)} to "
            "update; run `churnseg run` or `churnseg score` first"
        )
    snapshot = date.fromisoformat(str(found["snapshot_date"].iloc[0])[:10])
    run_id = str(found["run_id"].iloc[0])
    try:
        state = mlflow.artifacts.load_dict(f"runs:/{run_id}/{STATE_ARTIFACT}")
    except Exception:  # the run is gone, or it predates the state artifact
        raise IntradayUnavailableError(
            f"snapshot {snapshot} was published by run {run_id}, which logged no "
            f"{STATE_ARTIFACT} (or is gone from the MLflow store); run `churnseg score` once "
            "to publish a snapshot an update can build on"
        ) from None
    return PublishedSnapshot(snapshot, run_id, PopulationState.from_dict(state))


def changed_customers(
    config: Config, target: PublishTarget, snapshot: PublishedSnapshot, as_of: datetime
) -> list[str]:
    """Return the customers to re-score: rows newer than the snapshot, or not in it at all.

    Newer rows are transactions, events, subscription starts or ends and signup or churn dates
    from the snapshot date up to ``as_of`` (``sources.customers_changed_since``); a customer of
    the customers source the snapshot lacks (a new account without any dated row) counts too.
    """
    found = customers_changed_since(config, snapshot.since, as_of)
    changed: set[str] = set().union(*found.values()) if found else set()
    table = qualified(target, target.names.customer_scores)
    published = read_table(
        target,
        f"SELECT customer_id FROM {table} WHERE snapshot_date = ?",
        (snapshot.snapshot_date.isoformat(),),
    )
    changed |= source_customer_ids(config) - set(published["customer_id"].astype(str))
    return sorted(changed)


@dataclass(frozen=True)
class Rescorer:
    """What re-scoring needs loaded: the snapshot, its state, the champions, the feature levels.

    Built once per update run, and once (then on champion changes) by the API.
    """

    snapshot: PublishedSnapshot
    models: ChampionModels
    features: FeatureConfig


def load_rescorer(
    config: Config, target: PublishTarget, snapshot: PublishedSnapshot | None = None
) -> Rescorer:
    """Return the rescorer of the newest published snapshot (``snapshot``, when read already).

    Raises:
        IntradayUnavailableError: No snapshot to update, or the champion models are not the
            ones that scored it (a model was promoted or rolled back since): its thresholds
            belong to other models, so only a full ``churnseg score`` can publish again.
    """
    snapshot = snapshot if snapshot is not None else published_snapshot(target)
    models = load_champions(config)
    state = snapshot.state
    loaded = (models.segmentation_version, models.churn_version)
    if loaded != (state.segmentation_version, state.churn_version):
        raise IntradayUnavailableError(
            f"snapshot {snapshot.snapshot_date} was scored with segmentation "
            f"v{state.segmentation_version} and churn v{state.churn_version}; the champions "
            f"are now v{loaded[0]} and v{loaded[1]}: run `churnseg score` to publish a full "
            "snapshot"
        )
    features, _ = champion_levels(config)
    return Rescorer(snapshot, models, features)


def update_as_of(config: Config, as_of: datetime | None = None) -> datetime:
    """Return the moment an update's features are taken at: ``as_of``, else now (naive UTC).

    With ``cleaning.now`` set (a replayed or fixed clock), the end of that day instead of the
    machine's clock, so the update never reads rows cleaning would call future.
    """
    if as_of is not None:
        return as_of.astimezone(UTC).replace(tzinfo=None) if as_of.tzinfo else as_of
    if config.cleaning.now is not None:
        return datetime.combine(config.cleaning.now, time.max).replace(microsecond=0)
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def rescore_stage(
    config: Config,
    target: PublishTarget,
    rescorer: Rescorer,
    customer_ids: list[str] | None,
    as_of: datetime,
    paths: RunPaths,
    run_id: str,
    keyed: KeyedSources | None = None,
    con: WarmDuckDB | None = None,
) -> Path | None:
    """Re-score ``customer_ids`` as of ``as_of`` into ``paths.scores``; None when none is known.

    Only these customers' rows are extracted and cleaned; their features are built with the
    snapshot's BTYD fit and attribute kinds, scored with its thresholds, and the newest
    corrections people recorded for them are applied. Rows carry the snapshot's date.
    ``customer_ids`` None re-scores everyone the same way: the full build an update must equal.
    ``keyed``: read file sources through their customer-ordered copies (the API's), not by
    filtering every row; ``con``: clean and build features on this warm connection, which
    compiles each query once (the API's, one per thread).
    """
    state = rescorer.snapshot.state
    # The feature tables only: allocation's tables are not re-read by an update. Cleaning's
    # clock is today's end, not the second: rows later today are not future rows (features
    # read nothing at or after ``as_of`` anyway), and its queries stay the same all day.
    cleaning = config.cleaning.model_copy(
        update={"now": config.cleaning.now or datetime.now(UTC).date()}
    )
    narrow = config.model_copy(
        update={
            "sources": {t: s for t, s in config.sources.items() if t in CLEAN_ORDER},
            "cleaning": cleaning,
        }
    )
    shutil.rmtree(paths.root, ignore_errors=True)
    if keyed is not None and customer_ids is not None:
        extracted = keyed.extract(paths.raw, customer_ids)
    else:
        extracted = extract_sources(narrow, paths.raw, customer_ids)
    if sum(extracted.values()) == 0:
        return None
    kinds = cast(dict[str, AttributeKind], state.attribute_kinds)  # as the full run wrote them
    booleans = frozenset(state.boolean_text) if state.boolean_text is not None else None
    clean_stage(narrow, paths, scoped=True, attribute_kinds=kinds, con=con, boolean_text=booleans)
    if not _any_rows(paths.clean):
        return None  # every row quarantined and no date to place the customer at
    plan = CutoffPlan(as_of, as_of, (), config.snapshots.horizon_days)
    feature_stage(
        narrow,
        paths,
        plan,
        only=("scoring",),
        btyd_fixed=state.btyd,
        features=rescorer.features,
        engine=FeatureEngine(con) if con is not None else None,
    )
    features_path = paths.features / "scoring.parquet"
    features = pq.ParquetFile(features_path)
    if features.metadata.num_rows == 0:
        return None
    one = customer_ids[0] if customer_ids is not None and len(customer_ids) == 1 else None
    feedback = read_feedback(target, one)
    context = scoring_context(
        config,
        run_id,
        features_path,
        state=state,
        models=rescorer.models,
        corrections=corrections_as_overrides(feedback),
    )
    context = replace(
        context, snapshot_date=rescorer.snapshot.snapshot_date, update_kind=INTRADAY_KIND
    )
    score_batches_to_file(
        features.iter_batches(batch_size=config.publish.chunk_rows),
        context,
        paths.scores,
        features_path.name,
    )
    return paths.scores


def _any_rows(clean: Path) -> bool:
    """Return True when a clean feature table (or the quarantine's seen ids) has a row."""
    files = [clean / f"{t}.parquet" for t in CLEAN_ORDER] + [clean / SEEN_FILE]
    return any(f.exists() and pq.ParquetFile(f).metadata.num_rows > 0 for f in files)
